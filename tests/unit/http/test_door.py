"""POST /messages answered at the door: the handler's answers, without the framework."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from litestar import Litestar, post
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.testing import AsyncTestClient

from feedsvc.http.admission import Admission
from feedsvc.http.door import PostsAtTheDoor
from feedsvc.http.errors import exception_handlers, problem
from feedsvc.http.submit import Submitter, post_message
from feedsvc.messages import MAX_BODY_BYTES
from feedsvc.metrics import Metrics
from tests.unit.http.fakes import FakeClaims, FakeProducer, sample

BODY = {"author": "ada", "text": "hello"}
JSON = {"Content-Type": "application/json"}
BODY_TIMEOUT_S = 0.2
PARTIAL_BODY = {"type": "http.request", "body": b'{"author":"a",', "more_body": True}
"""The start of a body whose rest is still to come."""


def submitter(
    producer: FakeProducer | None = None, admission: Admission | None = None
) -> Submitter:
    return Submitter(
        producer or FakeProducer(),
        admission or Admission(max_inflight=10, max_backlog=100),
        Metrics(),
        timeout_s=1.0,
        claims=FakeClaims(),
        body_timeout_s=BODY_TIMEOUT_S,
    )


def handler_app(sub: Submitter) -> Litestar:
    """The real handler, as `create_app` serves it."""
    return Litestar(
        [post_message],
        dependencies={"submitter": Provide(lambda: sub, use_cache=True, sync_to_thread=False)},
        exception_handlers=exception_handlers(),
        logging_config=None,
    )


def door_app(sub: Submitter, *, cors: bool = False) -> tuple[Litestar, list[str]]:
    """A Litestar app whose POST /messages only notes that it ran, behind the door."""
    reached: list[str] = []

    @post("/messages", status_code=202)
    async def handler() -> dict[str, str]:
        reached.append("handler")
        return {"status": "handler"}

    litestar = Litestar([handler], logging_config=None)
    litestar.asgi_handler = PostsAtTheDoor(litestar.asgi_handler, sub, cors=cors)
    return litestar, reached


async def test_full_inflight_is_refused_before_the_body_is_read() -> None:
    """Every slot taken: 429 with Retry-After and the handler's body, even for a bad body."""
    admission = Admission(max_inflight=1, max_backlog=10)
    admission.enter()
    sub = submitter(admission=admission)
    litestar, reached = door_app(sub)
    async with AsyncTestClient(litestar) as client:
        r = await client.post("/messages", json=BODY)
        again = await client.post("/messages", content=b"not even json")
    expected = problem(429, "too many messages in flight")
    assert (r.status_code, r.headers["retry-after"], r.content) == (429, "1", expected.content)
    assert r.headers["content-type"] == "application/json"
    assert again.status_code == 429
    assert reached == []
    labels: dict[str, Any] = {"status": "429", "reason": "too many messages in flight"}
    assert sample(sub.metrics, "feedsvc_posts_refused_total", **labels) == 2


async def test_kafka_down_and_backlog_are_refused_at_the_door() -> None:
    """Kafka known down: 503 with Retry-After 2; writer behind: 429 with the drain estimate."""
    admission = Admission(max_inflight=10, max_backlog=100)
    admission.kafka_failed()
    admission.kafka_failed()
    producer = FakeProducer()
    litestar, reached = door_app(submitter(producer, admission))
    async with AsyncTestClient(litestar) as client:
        down = await client.post("/messages", json=BODY)
        admission.kafka_ok()
        admission.backlog, admission.drain_per_s = 400, 100.0
        behind = await client.post("/messages", json=BODY)
    assert (down.status_code, down.headers["retry-after"]) == (503, "2")
    assert (behind.status_code, behind.headers["retry-after"]) == (429, "3")
    assert reached == [] and producer.calls == 0


async def test_posts_are_answered_at_the_door_and_other_requests_pass() -> None:
    """An admitted post is sent and answered 202 by the door; other paths reach the app."""
    producer = FakeProducer()
    litestar, reached = door_app(submitter(producer))
    async with AsyncTestClient(litestar) as client:
        r = await client.post("/messages", json=BODY)
        other = await client.post("/other", json=BODY)
    assert r.status_code == 202 and r.json()["id"] == str(producer.sent[0].id)
    assert r.headers["location"] == f"/messages/{producer.sent[0].id}"
    assert other.status_code == 404
    assert reached == []


async def test_cross_origin_posts_go_to_the_handler_when_cors_is_on() -> None:
    """With CORS on, a request with Origin goes to the handler, where CORS headers are
    added; without Origin, or with CORS off, the door answers it."""
    litestar, reached = door_app(submitter(), cors=True)
    async with AsyncTestClient(litestar) as client:
        await client.post("/messages", json=BODY, headers={"Origin": "https://app.example"})
        await client.post("/messages", json=BODY)
    assert reached == ["handler"]
    litestar, reached = door_app(submitter(), cors=False)
    async with AsyncTestClient(litestar) as client:
        await client.post("/messages", json=BODY, headers={"Origin": "https://app.example"})
    assert reached == []


REQUESTS: list[tuple[str, dict[str, str], bytes]] = [
    ("accepted", JSON, json.dumps(BODY).encode()),
    ("accepted with a key", {**JSON, "Idempotency-Key": "k-1"}, json.dumps(BODY).encode()),
    (
        "+json media type",
        {"Content-Type": "application/vnd.x+json; charset=utf-8"},
        b'{"author":"a","text":"t"}',
    ),
    ("no content type", {}, b'{"author":"a","text":"t"}'),
    ("form content type", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=b"),
    ("bad key", {**JSON, "Idempotency-Key": "sp ace"}, json.dumps(BODY).encode()),
    ("not json", JSON, b"{"),
    ("invalid utf-8", JSON, b'{"author":"a","text":"\xff"}'),
    ("extra field", JSON, b'{"author":"a","text":"t","x":1}'),
    ("blank text", JSON, b'{"author":"a","text":"  "}'),
    ("too large", JSON, json.dumps({"author": "a", "text": "x" * MAX_BODY_BYTES}).encode()),
]


@pytest.mark.parametrize(
    ("headers", "body"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
async def test_the_door_answers_as_the_handler_does(headers: dict[str, str], body: bytes) -> None:
    """Same status, body and headers from the door as from the Litestar handler."""
    answers = []
    for app in (handler_app(submitter()), door_app(submitter())[0]):
        async with AsyncTestClient(app) as client:
            answers.append(await client.post("/messages", content=body, headers=headers))
    by_handler, by_door = answers
    assert by_door.status_code == by_handler.status_code
    assert by_door.headers["content-type"] == by_handler.headers["content-type"]
    assert by_door.headers.get("retry-after") == by_handler.headers.get("retry-after")
    if by_handler.status_code == 202:  # a new id and time each: compare the rest
        door, handler = by_door.json(), by_handler.json()
        assert door.keys() == handler.keys()
        assert (door["author"], door["text"]) == (handler["author"], handler["text"])
        assert by_door.headers["location"] == f"/messages/{door['id']}"
    else:
        assert by_door.content == by_handler.content
        assert "location" not in by_door.headers


async def call(
    app: Any, incoming: list[dict[str, Any]], headers: tuple[tuple[bytes, bytes], ...] = ()
) -> list[dict[str, Any]]:
    """What `app` sends for a POST /messages whose body comes as `incoming`, with no
    Content-Length (as a chunked request comes); when `incoming` runs out, the rest of
    the body never comes."""
    sent: list[dict[str, Any]] = []

    async def receive() -> Any:
        if incoming:
            return incoming.pop(0)
        await asyncio.Event().wait()  # the rest never comes

    async def send(message: Any) -> None:
        sent.append(message)

    scope: Any = {
        "type": "http",
        "method": "POST",
        "path": "/messages",
        "raw_path": b"/messages",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "http_version": "1.1",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "headers": [(b"content-type", b"application/json"), *headers],
        "state": {},
    }
    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


async def test_a_client_that_leaves_mid_body_gets_nothing_sent() -> None:
    """The body never finished: no Kafka send and no answer written."""
    producer = FakeProducer()
    door = PostsAtTheDoor(_unreachable, submitter(producer), cors=False)
    sent = await call(
        door,
        [
            {"type": "http.request", "body": b'{"author":"a",', "more_body": True},
            {"type": "http.disconnect"},
        ],
    )
    assert (sent, producer.calls) == ([], 0)


async def test_a_body_too_large_without_content_length_is_413() -> None:
    """Chunks adding up past the limit: 413 once the limit is passed, nothing sent."""
    producer = FakeProducer()
    door = PostsAtTheDoor(_unreachable, submitter(producer), cors=False)
    half = b"x" * (MAX_BODY_BYTES // 2 + 1)
    chunk = {"type": "http.request", "body": half, "more_body": True}
    sent = await call(door, [chunk, dict(chunk)])
    assert sent[0]["status"] == 413
    assert producer.calls == 0


async def test_a_bug_is_a_500_in_our_shape(caplog: pytest.LogCaptureFixture) -> None:
    """Anything unforeseen while sending: 500 with the error body, and the traceback logged."""
    litestar, _ = door_app(submitter(FakeProducer(failures=[RuntimeError("bug")])))
    async with AsyncTestClient(litestar) as client:
        r = await client.post("/messages", json=BODY)
    assert (r.status_code, r.json()["error"]) == (500, "internal_error")
    assert any(rec.exc_info and "bug" in str(rec.exc_info[1]) for rec in caplog.records)


async def _unreachable(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the door passed on a post it should answer")


async def test_a_body_slower_than_its_timeout_is_408_and_no_kafka_error() -> None:
    """A body still unfinished at its timeout: 408 naming the body; nothing sent, no send error."""
    producer = FakeProducer()
    sub = submitter(producer)
    door = PostsAtTheDoor(_unreachable, sub, cors=False)
    start, body = await call(door, [PARTIAL_BODY])
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"])["field"] == "body"
    assert producer.calls == 0
    errors = [m for m in sub.metrics.registry.collect() if m.name == "feedsvc_kafka_send_errors"]
    assert [sample for family in errors for sample in family.samples] == []


async def test_a_cross_origin_body_slower_than_its_timeout_is_408_with_cors_headers() -> None:
    """A post with an Origin goes to the handler, whose body read has the same deadline."""
    producer = FakeProducer()
    sub = submitter(producer)
    allowed = "https://app.example"
    litestar = Litestar(
        [post_message],
        dependencies={"submitter": Provide(lambda: sub, use_cache=True, sync_to_thread=False)},
        exception_handlers=exception_handlers(),
        cors_config=CORSConfig(allow_origins=[allowed]),
        logging_config=None,
    )
    litestar.asgi_handler = PostsAtTheDoor(litestar.asgi_handler, sub, cors=True)
    sent = await call(litestar, [PARTIAL_BODY], ((b"origin", allowed.encode()),))
    start, body = sent[0], sent[-1]
    assert start["status"] == 408
    assert (b"access-control-allow-origin", allowed.encode()) in start["headers"]
    assert json.loads(body["body"])["field"] == "body"
    assert producer.calls == 0
