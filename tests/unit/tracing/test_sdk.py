"""Tracing on, against a real OTLP/HTTP receiver: the spans, their attributes and their links."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.otlp import Receiver, Span, receiving
from feedsvc import tracing
from feedsvc.http.requestid import RequestIds
from feedsvc.kafka import REQUEST_ID_HEADER, SUBMITTED
from feedsvc.tracing import sdk
from tests.unit.ingest.fakes import Record

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENTS = ["b7ad6b7169203331", "00f067aa0ba902b7"]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A receiver, and the SDK's variables pointing at it (the exporter reads os.environ)."""
    with receiving() as got:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", got.url)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
        monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
        yield got


def _named(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def _record(offset: int, parent: str | None, rid: str | None) -> Record:
    headers: list[tuple[str, bytes]] = []
    if rid is not None:
        headers.append((REQUEST_ID_HEADER, rid.encode()))
    if parent is not None:
        headers.append(("traceparent", f"00-{TRACE}-{parent}-01".encode()))
    return Record(SUBMITTED, offset % 2, offset, b"ada", b"{}", tuple(headers))


async def test_a_batch_span_links_to_each_records_producer(receiver: Receiver) -> None:
    """One span per batch, linked to every record's `traceparent`, with its request id,
    the batch's size and each partition's offsets."""
    records = [
        _record(10, PARENTS[0], "r-10"),
        _record(11, PARENTS[1], None),
        _record(12, None, "x"),
    ]
    async with tracing.opened(tracing.WRITER, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}) as on:
        with on.batch(records):
            pass
    batch = _named(receiver.spans, f"process {SUBMITTED}")
    assert batch.service == "feedsvc-writer"
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert batch.attributes["feedsvc.offsets"] == ["0:10-12", "1:11-11"]
    assert [(link.trace_id, link.span_id) for link in batch.links] == [(TRACE, p) for p in PARENTS]
    assert batch.links[0].attributes["feedsvc.request_id"] == "r-10"
    assert batch.links[0].attributes["messaging.kafka.offset"] == 10
    assert batch.trace_id != TRACE  # a batch has many parents: links, not one of them


async def test_a_produce_span_goes_into_the_records_headers(receiver: Receiver) -> None:
    """The send span carries the message id and the request id, and its context goes into
    the record's headers as a W3C `traceparent`, beside the request id."""
    headers = [(REQUEST_ID_HEADER, b"r-1")]
    async with tracing.opened(tracing.API, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}) as on:
        with on.produce("m-1", "r-1", headers):
            pass
    produce = _named(receiver.spans, f"send {SUBMITTED}")
    assert produce.service == "feedsvc-api" and produce.kind == 4  # SPAN_KIND_PRODUCER
    [(_, rid), (name, traceparent)] = headers
    assert rid == b"r-1" and name == "traceparent"
    assert traceparent.startswith(f"00-{produce.trace_id}-{produce.span_id}-".encode())
    assert produce.attributes["feedsvc.message_id"] == "m-1"
    assert produce.attributes["feedsvc.request_id"] == "r-1"


async def test_a_request_gets_a_server_span_with_its_request_id(receiver: Receiver) -> None:
    """Each HTTP request is a server span named by its route, with the request's id; probes
    and scrapes are not traced."""
    inner: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        inner.append(scope["path"])
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with tracing.opened(tracing.API, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}) as on:
        traced = RequestIds(on.around_http(app))
        for path in ("/messages", "/messages/7f1c", "/health/ready", "/metrics"):
            scope: Any = {
                "type": "http",
                "method": "POST",
                "path": path,
                "headers": [(b"x-request-id", b"rid-42")],
                "asgi": {"version": "3.0"},
            }

            async def receive() -> Any:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: Any) -> None:
                pass

            await traced(scope, receive, send)
    assert inner == ["/messages", "/messages/7f1c", "/health/ready", "/metrics"]
    spans = receiver.spans
    assert sorted(s.name for s in spans) == ["POST /messages", "POST /messages/{id}"]
    server = _named(spans, "POST /messages")
    assert server.kind == 2  # SPAN_KIND_SERVER
    assert server.attributes["feedsvc.request_id"] == "rid-42"
    assert _named(spans, "POST /messages/{id}").attributes["feedsvc.request_id"] == "rid-42"


async def test_exit_waits_at_most_the_flush_bound_for_a_silent_receiver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A receiver that takes the connection and never answers holds the exit for at most
    `FLUSH_S` (then the spans are dropped), not the exporter's own timeouts and retries."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # never accepts
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
        async with tracing.opened(tracing.WRITER, {"OTEL_EXPORTER_OTLP_ENDPOINT": url}) as on:
            with on.batch([_record(1, PARENTS[0], "r")]):
                pass
            began = time.monotonic()
        took = time.monotonic() - began
    assert sdk.FLUSH_S - 0.5 < took < sdk.FLUSH_S + 2


async def test_composes_empty_variables_leave_the_endpoint_in_charge(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compose.yaml passes the unset OTEL_* as empty strings: spans still reach the endpoint."""
    compose_defaults = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
        "OTEL_EXPORTER_OTLP_HEADERS": "",
        "OTEL_RESOURCE_ATTRIBUTES": "",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
    }
    for name, value in compose_defaults.items():
        monkeypatch.setenv(name, value)
    environ = {**compose_defaults, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    async with tracing.opened(tracing.API, environ) as on:
        with on.produce("m-2", None, []):
            pass
    assert _named(receiver.spans, f"send {SUBMITTED}").service == "feedsvc-api"
