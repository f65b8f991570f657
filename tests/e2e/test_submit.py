"""POST /messages against the real api, writer, Kafka and database (DESIGN §2.1–2.3, §4)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from local_stack import Stack

from feedsvc.kafka import SUBMITTED
from tests.support import end_offsets, stored_ids, wait_for

JSON = {"content-type": "application/json"}


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


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"text": "hi"}, "author"),
        ({"author": "x"}, "text"),
        ({"author": "no spaces", "text": "hi"}, "author"),
        ({"author": "a" * 33, "text": "hi"}, "author"),
        ({"author": "ok", "text": ""}, "text"),
        ({"author": "ok", "text": " \n "}, "text"),
        ({"author": "ok", "text": "x" * 281}, "text"),
        ({"author": "ok", "text": "bell\u0007"}, "text"),
        ({"author": "ok", "text": "hi", "admin": True}, "admin"),
        ({"author": 5, "text": "hi"}, "author"),
    ],
)
async def test_invalid_body_is_refused_and_produces_nothing(
    client: httpx.AsyncClient, stack: Stack, payload: dict[str, object], field: str
) -> None:
    """Each rule broken gives 400 naming the field, and no record reaches Kafka."""
    before = await end_offsets(stack, SUBMITTED)
    r = await client.post("/messages", content=json.dumps(payload), headers=JSON)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["field"] == field
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
    """The same Idempotency-Key twice gives the same id and one row."""
    key = {"idempotency-key": str(uuid.uuid4())}
    first = await client.post("/messages", json={"author": author, "text": "once"}, headers=key)
    again = await client.post("/messages", json={"author": author, "text": "once"}, headers=key)
    other = await client.post("/messages", json={"author": author, "text": "twice"})
    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    ids = await wait_for(lambda: stored_ids(stack, author), lambda ids: len(ids) >= 2, 20, "rows")
    await anyio.sleep(1)  # a duplicate, if any, would arrive right behind
    assert sorted(await stored_ids(stack, author)) == sorted(
        [first.json()["id"], other.json()["id"]]
    )
    assert len(ids) == 2


async def test_concurrent_posts_all_stored_once(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """2,000 concurrent posts: exactly the 2,000 ids the api returned end up stored."""
    accepted: list[str] = []
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60, limits=limits) as http:

        async def post(i: int) -> None:
            r = await http.post("/messages", json={"author": author, "text": f"message {i}"})
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])

        async with anyio.create_task_group() as tg:
            for i in range(2000):
                tg.start_soon(post, i)
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
