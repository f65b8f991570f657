"""Tracing end to end: a post's spans from the api through Kafka to the writer's batch, and
nothing of the exporter in a process without an OTLP endpoint (docs/tracing.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from devstack import Stack
from devstack.otlp import Receiver, Span, receiving
from feedsvc.kafka import SUBMITTED
from tests.support import native_only, wait_for

SERVER, PRODUCER = 2, 4  # OTLP's SpanKind values
EXPORTER_MARK = "/google/_upb/"
"""In a process's memory map once the OTLP exporter is imported: protobuf's C extension,
which nothing else of feedsvc loads."""


def _maps(pid: int | None) -> str:
    assert pid is not None
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def traced(make_stack: Callable[..., Stack]) -> Iterator[tuple[Stack, Receiver]]:
    """A stack of its own whose api and writer export to a receiver, quickly."""
    with receiving() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        yield make_stack(env), receiver


def _one(spans: list[Span], what: str, match: Callable[[Span], bool]) -> Span:
    found = [s for s in spans if match(s)]
    assert len(found) == 1, f"{what}: {found} among {[(s.service, s.name) for s in spans]}"
    return found[0]


@native_only
async def test_a_posts_trace_runs_from_the_api_through_kafka_to_the_writers_batch(
    traced: tuple[Stack, Receiver], author: str
) -> None:
    """POST → send in one trace; the writer receives under the send span (the `traceparent`
    header crossed Kafka) and its batch span links to it, request id on both."""
    stack, receiver = traced
    rid = f"trace-{author}"
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        answer = await client.post(
            "/messages", json={"author": author, "text": "traced"}, headers={"X-Request-ID": rid}
        )
    assert answer.status_code == 202
    message_id = answer.json()["id"]

    def server_span(spans: list[Span]) -> Span | None:
        return next((s for s in spans if s.attributes.get("feedsvc.request_id") == rid), None)

    async def spans() -> list[Span]:
        return receiver.spans

    def complete(got: list[Span]) -> bool:
        # The batch span itself, not any span with a link: it ends after its INSERT and its
        # receives, so on a loaded machine it can come in a later export than they do.
        server = server_span(got)
        return server is not None and any(
            s.name == f"process {SUBMITTED}"
            and any(link.trace_id == server.trace_id for link in s.links)
            for s in got
        )

    got = await wait_for(spans, complete, 60, "the post's spans and the writer's batch span")
    server = _one(
        got,
        "server span",
        lambda s: s.name == "POST /messages" and s.attributes.get("feedsvc.request_id") == rid,
    )
    assert server.service == "feedsvc-api" and server.kind == SERVER and server.parent_span_id == ""
    trace = [s for s in got if s.trace_id == server.trace_id]
    send = _one(trace, "send span", lambda s: s.name == f"send {SUBMITTED}")
    assert send.kind == PRODUCER and send.parent_span_id == server.span_id
    assert send.attributes["feedsvc.message_id"] == message_id
    assert send.attributes["feedsvc.request_id"] == rid
    # The writer's receive span is the send span's child: its context came in the header.
    receive = _one(trace, "receive span", lambda s: s.service == "feedsvc-writer")
    assert receive.parent_span_id == send.span_id
    batch = _one(
        got,
        "batch span",
        lambda s: (
            s.name == f"process {SUBMITTED}"
            and any(link.span_id == send.span_id for link in s.links)
        ),
    )
    assert batch.service == "feedsvc-writer"
    link = next(link for link in batch.links if link.span_id == send.span_id)
    assert link.trace_id == server.trace_id
    assert link.attributes["feedsvc.request_id"] == rid
    assert batch.attributes["messaging.batch.message_count"] >= 1
    # The insert runs inside the batch span (psycopg's instrumentation).
    assert any(s.parent_span_id == batch.span_id and "INSERT" in s.name for s in got), [
        s.name for s in got if s.parent_span_id == batch.span_id
    ]
    assert EXPORTER_MARK in _maps(stack.service("api").pid)


def test_without_an_endpoint_no_exporter_is_loaded(stack: Stack) -> None:
    """The shared stack sets no OTLP endpoint: neither its api nor its writer loaded the
    exporter (the test above sees the same mark in a traced api)."""
    for role in ("api", "writer"):
        assert EXPORTER_MARK not in _maps(stack.service(role).pid), role
