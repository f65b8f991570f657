"""POST /messages against the real api, writer, Kafka and database.

Guarantees: ARCHITECTURE.md#accepted-means-durable, ARCHITECTURE.md#back-pressure,
ARCHITECTURE.md#bad-input.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path

import anyio
import httpx
import pytest

from devstack import Stack
from feedsvc.config import Settings
from feedsvc.kafka import SUBMITTED
from tests.support import end_offsets, extra_api, native_only, stored_ids, wait_for

JSON = {"content-type": "application/json"}
AUTHOR_RULE = "author must be 1-32 characters of A-Z, a-z, 0-9 and _"


async def test_accepted_message_is_stored(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """202 carries the id, echo and Location; the message is then stored and readable."""
    r = await client.post("/messages", json={"author": author, "text": "  hello  "})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "accepted"
    assert (body["author"], body["text"]) == (author, "hello")
    assert r.headers["location"] == f"/messages/{body['id']}"
    await wait_for(lambda: stored_ids(stack, author), lambda ids: ids == [body["id"]], 20, "row")
    got = await client.get(r.headers["location"])
    assert got.status_code == 200
    assert got.json()["text"] == "hello"


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("content", "field", "detail"),
    [
        (_body(text="hi"), "author", "author is required"),
        (_body(author="x"), "text", "text is required"),
        (_body(author="no spaces", text="hi"), "author", AUTHOR_RULE),
        (_body(author="a" * 33, text="hi"), "author", AUTHOR_RULE),
        (_body(author="ada\n", text="hi"), "author", AUTHOR_RULE),
        (_body(author="ok", text=""), "text", "text must not be empty"),
        (_body(author="ok", text=" \n "), "text", "text must not be empty"),
        (
            _body(author="ok", text="x" * 281),
            "text",
            "text is 281 characters long, the limit is 280",
        ),
        (
            _body(author="ok", text="bell\u0007"),
            "text",
            "text must not contain control characters (newline is allowed): U+0007 at character 5",
        ),
        (
            _body(author="ok", text="hi", admin=True),
            "admin",
            "unknown field 'admin': the body has only the fields author and text",
        ),
        (_body(author=5, text="hi"), "author", "author must be a string, not a number"),
        (
            _body(author="ok", text="\u200b\u2800\u3164 \ufeff"),
            "text",
            "text has no visible character, only white space and invisible characters "
            "such as U+200B",
        ),
        (
            b'{"author":"a","text":"caf\xe9"}',
            "text",
            "text is not valid UTF-8: byte 0xe9 at offset 25",
        ),
        (
            b'{"author": "ok", "text": "\\ud800"}',
            "text",
            "text is not valid Unicode: lone surrogate U+D800",
        ),
    ],
)
async def test_invalid_body_is_refused_and_produces_nothing(
    client: httpx.AsyncClient, stack: Stack, content: bytes, field: str, detail: str
) -> None:
    """Each rule broken gives 400 saying what is wrong and naming the field; nothing produced."""
    before = await end_offsets(stack, SUBMITTED)
    r = await client.post("/messages", content=content, headers=JSON)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    rid = r.headers["x-request-id"]
    assert r.json() == {"error": "bad_request", "detail": detail, "field": field, "request_id": rid}
    assert await end_offsets(stack, SUBMITTED) == before


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"{not json", JSON, 400),
        (b"[]", JSON, 400),
        (json.dumps({"author": "ok", "text": "x" * 5000}).encode(), JSON, 413),
        (b'{"author": "ok", "text": "hi"}', {"content-type": "text/plain"}, 415),
        (
            b'{"author": "ok", "text": "hi"}',
            {"content-type": "application/x-www-form-urlencoded"},
            415,
        ),
        (b'{"author": "ok", "text": "hi"}', {}, 415),
        (b'{"author": "ok", "text": "hi"}', {**JSON, "idempotency-key": "has space"}, 400),
    ],
)
async def test_bad_requests_get_json_errors(
    client: httpx.AsyncClient, stack: Stack, content: bytes, headers: dict[str, str], status: int
) -> None:
    """Malformed JSON, oversized bodies, wrong content types: a 4xx problem, nothing produced."""
    before = await end_offsets(stack, SUBMITTED)
    r = await client.post("/messages", content=content, headers=headers)
    assert r.status_code == status
    problem = r.json()
    assert problem["error"] and problem["detail"]
    assert await end_offsets(stack, SUBMITTED) == before


@pytest.mark.parametrize(
    ("method", "url", "headers", "content"),
    [
        ("POST", "/messages", JSON, b'{"author":"a","text":"caf\xe9"}'),
        ("POST", "/messages", JSON, b'{"au\xffthor":"a","text":"x"}'),
        ("POST", "/messages", JSON, b"\xff\xfe{}"),
        ("POST", "/messages", JSON, b'{"author":"a","text":"\\udc00"}'),
        ("POST", "/messages", JSON, b"[" * 4000),
        ("POST", "/messages", {**JSON, "idempotency-key": b"k\xe9y"}, b"{}"),
        ("POST", "/messages", {**JSON, "idempotency-key": "k\u00e9y".encode()}, b"{}"),
        ("POST", "/messages", {"content-type": b"application/json\xff"}, b"{}"),
        ("POST", "/messages", {"content-type": b"text/\xe9"}, b"{}"),
        ("POST", "/messages?x=%ff", JSON, b"{}"),
        ("GET", "/messages?limit=%ff", {}, b""),
        ("GET", "/messages?before=%ff", {}, b""),
        ("GET", "/messages?before=%c3%a9", {}, b""),
        ("GET", "/messages?before=" + "A" * 3000, {}, b""),
        ("GET", "/messages/%ff", {}, b""),
        ("GET", "/messages/%00", {}, b""),
        ("GET", "/feed?limit=%ff", {}, b""),
        ("GET", "/health/ready?%ff=%ff", {}, b""),
    ],
)
async def test_hostile_bytes_never_answer_500(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str | bytes],
    content: bytes,
) -> None:
    """Invalid UTF-8, non-ASCII or odd bytes in a body, header, path or query: never a 5xx,
    and a refusal is our JSON problem."""
    raw = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in headers.items()}
    r = await client.request(method, url, headers=raw, content=content)
    assert r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    if method == "POST" or r.status_code >= 400:
        assert 400 <= r.status_code < 500, r.text
        assert set(r.json()) >= {"error", "detail"}


@pytest.mark.parametrize(
    "headers",
    [
        {b"last-event-id": b"1\xff"},
        {b"last-event-id": "\u00e9".encode()},
        {b"last-event-id": b"\xc3\xa9-\xff"},
    ],
)
async def test_hostile_last_event_id_never_answers_500(
    stack: Stack, headers: dict[bytes, bytes]
) -> None:
    """Non-ASCII or invalid bytes in Last-Event-ID (header or query): the stream opens."""
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        empty: dict[bytes, bytes] = {}
        for params, extra in ((None, headers), ({"last_event_id": "%ff\u00e9"}, empty)):
            async with http.stream("GET", "/feed", params=params, headers=extra) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")


async def test_chunked_oversized_body_is_refused(client: httpx.AsyncClient, stack: Stack) -> None:
    """A body over 4 KiB is refused with 413 even without a Content-Length to go by."""
    before = await end_offsets(stack, SUBMITTED)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"author": "ok", "text": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = await client.post("/messages", content=chunks(), headers=JSON)
    assert r.status_code == 413
    assert await end_offsets(stack, SUBMITTED) == before


async def test_idempotency_key_stores_once(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """The same Idempotency-Key twice gives the same id, the first created_at, and one row."""
    key = {"idempotency-key": str(uuid.uuid4())}
    first = await client.post("/messages", json={"author": author, "text": "once"}, headers=key)
    again = await client.post("/messages", json={"author": author, "text": "once"}, headers=key)
    other = await client.post("/messages", json={"author": author, "text": "twice"})
    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    ids = await wait_for(lambda: stored_ids(stack, author), lambda ids: len(ids) >= 2, 20, "rows")
    stored = await client.post("/messages", json={"author": author, "text": "once"}, headers=key)
    assert stored.status_code == 202, stored.text
    assert _created(again) == _created(stored) == _created(first)
    await anyio.sleep(1)  # a duplicate, if any, would arrive right behind
    assert sorted(await stored_ids(stack, author)) == sorted(
        [first.json()["id"], other.json()["id"]]
    )
    assert len(ids) == 2


def _created(r: httpx.Response) -> datetime:
    return datetime.fromisoformat(r.json()["created_at"])


async def test_idempotency_key_reused_for_another_text_is_422(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """A key reused with another text gets 422, whether the first is only sent or stored,
    on the api that sent it or another; the first text stays, stored once."""
    key = {"idempotency-key": str(uuid.uuid4())}
    first = await client.post("/messages", json={"author": author, "text": "first"}, headers=key)
    assert first.status_code == 202, first.text
    before = await end_offsets(stack, SUBMITTED)
    # At once, on the same api: the writer may not have stored it yet.
    reused = await client.post("/messages", json={"author": author, "text": "other"}, headers=key)
    assert reused.status_code == 422, reused.text
    assert reused.json() == {
        "error": "unprocessable_content",
        "detail": "Idempotency-Key was already used for a different text",
        "field": "idempotency-key",
        "request_id": reused.headers["x-request-id"],
    }
    assert await end_offsets(stack, SUBMITTED) == before
    await wait_for(lambda: stored_ids(stack, author), lambda ids: len(ids) == 1, 20, "the row")
    # Another replica never saw the key: the database answers for it.
    with extra_api(stack, "api-b") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as other:
            body = {"author": author, "text": "other"}
            reused = await other.post("/messages", json=body, headers=key)
            assert reused.status_code == 422, reused.text
            body = {"author": author, "text": "first"}
            again = await other.post("/messages", json=body, headers=key)
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert _created(again) == _created(first)
    assert await end_offsets(stack, SUBMITTED) == before
    got = await client.get(f"/messages/{first.json()['id']}")
    assert got.json()["text"] == "first"
    assert await stored_ids(stack, author) == [first.json()["id"]]


async def test_concurrent_posts_all_stored_once(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """2,000 posts from 32 concurrent workers: exactly the 2,000 ids returned end up stored."""
    # A fixed set of workers, each with its own connection, so the test measures the
    # api: 2,000 tasks queued on one httpx pool made its bookkeeping quadratic and the
    # test process, not the api, the bottleneck (PoolTimeouts on a busy machine).
    accepted: list[str] = []
    send, receive = anyio.create_memory_object_stream[int](2000)
    for i in range(2000):
        send.send_nowait(i)
    send.close()

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as http:
            async for i in receive:
                r = await http.post("/messages", json={"author": author, "text": f"message {i}"})
                assert r.status_code == 202, r.text
                accepted.append(r.json()["id"])

    async with receive, anyio.create_task_group() as tg:
        for _ in range(32):
            tg.start_soon(worker)
    assert len(set(accepted)) == 2000
    ids = await wait_for(
        lambda: stored_ids(stack, author), lambda ids: len(ids) >= 2000, 60, "2000 rows"
    )
    assert sorted(ids) == sorted(accepted)


async def test_unknown_message_is_404(client: httpx.AsyncClient) -> None:
    """A message id never stored answers 404 with a JSON problem."""
    r = await client.get(f"/messages/{uuid.uuid4()}")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    assert (await client.get("/messages/not-a-uuid")).status_code == 404


async def test_health_and_metrics(client: httpx.AsyncClient) -> None:
    """Live and ready answer 200 on a healthy stack; metrics are Prometheus text."""
    assert (await client.get("/health/live")).status_code == 200
    ready = await client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == ready.json()["kafka"] == "ok"
    text = (await client.get("/metrics")).text
    assert "feedsvc_posts_accepted_total" in text
    assert "# TYPE feedsvc_posts_inflight gauge" in text


@pytest.mark.slow
@native_only  # stops the broker and freezes the database
async def test_kafka_down_answers_within_the_timeout_from_arrival(
    make_stack: Callable[..., Stack],
) -> None:
    """Kafka stopped and the database frozen, shipped defaults: every keyed POST gets 503
    within FEED_KAFKA_TIMEOUT_S of being sent, key lookup included."""
    defaults = Settings()
    bound = defaults.kafka_timeout_s
    stack = make_stack(
        {
            "FEED_KAFKA_TIMEOUT_S": str(bound),
            "FEED_DB_TIMEOUT_S": str(defaults.db_timeout_s),
            "FEED_BACKLOG_REFRESH_S": str(defaults.backlog_refresh_s),
        }
    )
    author = "b_" + uuid.uuid4().hex[:20]
    postmaster = stack.postgres.pid
    assert postmaster is not None
    # Connections already open, so only the api is timed.
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=bound + 10) as http:
        first = await http.post("/messages", json={"author": author, "text": "before"})
        assert first.status_code == 202, first.text

        async def post(i: int) -> float:
            key = {"idempotency-key": str(uuid.uuid4())}
            body = {"author": author, "text": f"down {i}"}
            began = time.monotonic()
            r = await http.post("/messages", json=body, headers=key)
            elapsed = time.monotonic() - began
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"] == "unavailable"
            return elapsed

        stack.kafka.stop()
        frozen = _freeze(postmaster)
        try:
            # Ten at once, before the api has seen Kafka fail, then more one by one.
            timings: list[float] = []
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(_append, timings, post(i))
            timings += [await post(i) for i in range(10, 13)]
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        # The api's deadline runs from arrival; the client's clock also counts the loopback
        # round trip and its own scheduling (28 ms once, at load average 11). Without the
        # one deadline a keyed POST takes two timeouts (lookup, then send): 10 s.
        assert max(timings) <= bound + 0.5, timings
        stack.kafka.start()

        async def after() -> httpx.Response:
            return await http.post("/messages", json={"author": author, "text": "after"})

        # Generous: the broker, the writer's group and the thawed database all recover.
        back = await wait_for(after, lambda r: r.status_code == 202, 120, "202 after Kafka is back")
    wanted = {first.json()["id"], back.json()["id"]}
    await wait_for(
        lambda: stored_ids(stack, author), lambda ids: wanted <= set(ids), 120, "both stored"
    )


def _freeze(postmaster: int) -> list[int]:
    """SIGSTOP the postmaster and every process it forked; returns them, for SIGCONT."""
    # Each backend calls setsid() at birth, so the postmaster's process group is not enough.
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[1]) == postmaster:
            pids.append(int(stat.parent.name))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


async def _append(into: list[float], timing: Awaitable[float]) -> None:
    into.append(await timing)
