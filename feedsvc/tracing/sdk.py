"""Tracing on: the OpenTelemetry SDK, its OTLP/HTTP exporter, and the official instrumentations.

Imported by `feedsvc.tracing.opened` only when an OTLP endpoint is set (docs/tracing.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.propagators import textmap
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind

from feedsvc.kafka import REQUEST_ID_HEADER, SUBMITTED
from feedsvc.tracing import ASGIApp

log = logging.getLogger(__name__)

FLUSH_S = 3.0
"""The most that exit waits for the last spans: shutdown must stay within its grace period."""
MAX_LINKS = 1000
"""Links per span unless `OTEL_SPAN_LINK_COUNT_LIMIT` says otherwise: one per record of a
batch, and `FEED_WRITER_BATCH` is 500 by default (the SDK's own default keeps 128)."""
REQUEST_ID = "feedsvc.request_id"
MESSAGE_ID = "feedsvc.message_id"
QUIET_URLS = "/health/,/metrics"
"""No server span for probes and scrapes (every few seconds each), unless
`OTEL_PYTHON_ASGI_EXCLUDED_URLS` or `OTEL_PYTHON_EXCLUDED_URLS` says otherwise."""
_ROUTES = frozenset({"/messages", "/feed", "/health/live", "/health/ready", "/metrics", "/"})


Headers = Sequence[tuple[str, bytes]]


class Getter(textmap.Getter[Headers]):
    """Reads W3C trace context from a consumed record's headers (a sequence of (name, bytes))."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        found = [bytes(v).decode("latin-1") for n, v in carrier if n == key]
        return found or None

    def keys(self, carrier: Headers) -> list[str]:
        return [n for n, _ in carrier]


class Setter(textmap.Setter[list[tuple[str, bytes]]]):
    """Adds W3C trace context to a record's headers about to be sent."""

    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode("latin-1")))


_GETTER = Getter()
_SETTER = Setter()


class On:
    """Tracing on: spans go to the provider's batch processor, and from it to the exporter."""

    def __init__(self, provider: TracerProvider, quiet_urls: str = QUIET_URLS) -> None:
        self.provider = provider
        self.quiet_urls = quiet_urls
        self.tracer = provider.get_tracer("feedsvc")

    def around_http(self, app: ASGIApp) -> ASGIApp:
        # The per-message receive/send spans of ASGI would add one span per SSE frame.
        middleware: ASGIApp = OpenTelemetryMiddleware(
            app,
            tracer_provider=self.provider,
            excluded_urls=self.quiet_urls,
            exclude_spans=["receive", "send"],
            default_span_details=_span_details,
            server_request_hook=_with_request_id,
        )
        return middleware

    def produce(
        self, message_id: object, request_id: str | None, headers: list[tuple[str, bytes]]
    ) -> AbstractContextManager[Any]:
        return self._produce(message_id, request_id, headers)

    @contextmanager
    def _produce(
        self, message_id: object, request_id: str | None, headers: list[tuple[str, bytes]]
    ) -> Iterator[None]:
        attributes = {MESSAGE_ID: str(message_id), "messaging.destination.name": SUBMITTED}
        if request_id is not None:
            attributes[REQUEST_ID] = request_id
        with self.tracer.start_as_current_span(
            f"send {SUBMITTED}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            # Our own, not the aiokafka instrumentation's: its send wrapper works out the
            # record's partition a second time, and it would wrap the relay's consumer too.
            propagate.inject(headers, setter=_SETTER)
            yield

    def batch(self, records: Sequence[Any]) -> AbstractContextManager[Any]:
        return self._batch(records)

    @contextmanager
    def _batch(self, records: Sequence[Any]) -> Iterator[None]:
        # A batch has many parents: links, not a parent, join it to each post's trace
        # (https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/#trace-structure).
        links = []
        ranges: dict[int, tuple[int, int]] = {}
        for record in records:
            first, last = ranges.get(record.partition, (record.offset, record.offset))
            ranges[record.partition] = (min(first, record.offset), max(last, record.offset))
            headers: Headers = getattr(record, "headers", None) or ()
            parent = trace.get_current_span(propagate.extract(headers, getter=_GETTER))
            context = parent.get_span_context()
            if context.is_valid:
                attributes: dict[str, Any] = {
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.offset": record.offset,
                }
                rid = next((v for n, v in headers if n == REQUEST_ID_HEADER), None)
                if rid is not None:
                    attributes[REQUEST_ID] = bytes(rid).decode("utf-8", "replace")
                links.append(Link(context, attributes))
        span_attributes: dict[str, Any] = {
            "messaging.batch.message_count": len(records),
            "messaging.destination.name": SUBMITTED,
            "feedsvc.offsets": [f"{p}:{a}-{b}" for p, (a, b) in sorted(ranges.items())],
        }
        with self.tracer.start_as_current_span(
            f"process {SUBMITTED}", kind=SpanKind.CONSUMER, links=links, attributes=span_attributes
        ):
            yield


def _span_details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`METHOD /route`: a message's own path would make a span name per message."""
    path = scope.get("path", "")
    route = path if path in _ROUTES else "/messages/{id}" if path.startswith("/messages/") else ""
    return f"{scope.get('method', 'HTTP')} {route}".rstrip(), {}


def _with_request_id(span: Any, scope: dict[str, Any]) -> None:
    rid = (scope.get("state") or {}).get("request_id")
    if rid is not None and span.is_recording():
        span.set_attribute(REQUEST_ID, rid)


@asynccontextmanager
async def started(
    service: str, environ: Mapping[str, str], *, kafka_spans: bool
) -> AsyncIterator[On]:
    """A tracer provider exporting over OTLP/HTTP, with psycopg (and, with `kafka_spans`,
    aiokafka) instrumented."""
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME, if set, names us.
    name = environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: name}),
        span_limits=SpanLimits(
            max_links=None if environ.get("OTEL_SPAN_LINK_COUNT_LIMIT") else MAX_LINKS
        ),
        shutdown_on_exit=False,
    )
    # The exporter reads the endpoint, headers, timeout and compression from OTEL_*;
    # the processor its queue and batch sizes (OTEL_BSP_*); the provider its sampler.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    kafka = AIOKafkaInstrumentor()
    if kafka_spans:
        kafka.instrument(tracer_provider=provider)
    database = PsycopgInstrumentor()
    database.instrument(tracer_provider=provider, enable_commenter=False)
    log.info("tracing on", extra={"service": name})
    try:
        quiet = environ.get(
            "OTEL_PYTHON_ASGI_EXCLUDED_URLS", environ.get("OTEL_PYTHON_EXCLUDED_URLS", QUIET_URLS)
        )
        yield On(provider, quiet)
    finally:
        if kafka_spans:
            kafka.uninstrument()
        database.uninstrument()
        _shut_down(provider)


def _shut_down(provider: TracerProvider) -> None:
    """Flush and stop the exporter, waiting at most `FLUSH_S`: an unreachable collector must
    not hold the process past its grace period (the spans still queued are dropped)."""
    done = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    done.start()
    done.join(FLUSH_S)
    if done.is_alive():
        log.warning("tracing: spans still unsent at exit were dropped", extra={"after_s": FLUSH_S})
