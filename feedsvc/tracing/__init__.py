"""Tracing, optional and free when off: the facade every stage imports (docs/tracing.md).

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set:
then nothing of the OpenTelemetry SDK, its exporter or its instrumentations is imported,
and every hook is a shared no-op. On, `feedsvc.tracing.sdk` does the work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from typing import Any, Protocol

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
"""The standard variables that say where spans go; one of them turns tracing on."""

API = "feedsvc-api"
WRITER = "feedsvc-writer"


class Tracing(Protocol):
    """The hooks the api and the writer call; each is cheap and safe when tracing is off."""

    def around_http(self, app: ASGIApp) -> ASGIApp:
        """`app` with a server span around each HTTP request (or `app` itself)."""
        ...

    def produce(
        self, message_id: object, request_id: str | None, headers: list[tuple[str, bytes]]
    ) -> AbstractContextManager[Any]:
        """A span from a post's send to Kafka's acknowledgement; its context (W3C
        `traceparent`) is added to `headers`, the record's, beside the request id."""
        ...

    def batch(self, records: Sequence[Any]) -> AbstractContextManager[Any]:
        """A span over one batch's insert and commit, linked to each record's producer."""
        ...


_NOTHING: AbstractContextManager[None] = nullcontext()


class Off:
    """Tracing off: every hook returns what it was given, or one shared no-op."""

    def around_http(self, app: ASGIApp) -> ASGIApp:
        return app

    def produce(
        self, message_id: object, request_id: str | None, headers: list[tuple[str, bytes]]
    ) -> AbstractContextManager[Any]:
        return _NOTHING

    def batch(self, records: Sequence[Any]) -> AbstractContextManager[Any]:
        return _NOTHING


OFF = Off()


def configured(environ: Mapping[str, str]) -> bool:
    """True when the environment asks for spans (an OTLP endpoint, SDK not disabled)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINTS)


@asynccontextmanager
async def opened(
    service: str, environ: Mapping[str, str], *, kafka_spans: bool = False
) -> AsyncIterator[Tracing]:
    """This process's tracing, from the standard `OTEL_*` variables; flushed (bounded) at exit.

    Note: the SDK reads its own variables (sampler, headers, timeouts), as the
    specification has it, so they are not `FEED_*` settings. `kafka_spans` adds the
    aiokafka instrumentation (the writer's per-record receive spans and dead-letter sends);
    the api puts its own produce span's context into the record, and its relay reads the
    changefeed, whose records carry no context.
    """
    if not configured(environ):
        yield OFF
        return
    from feedsvc.tracing import sdk  # only now: off, nothing of the SDK is imported

    async with sdk.started(service, environ, kafka_spans=kafka_spans) as on:
        yield on
