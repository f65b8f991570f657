"""Idempotency-Key across api replicas, through a full key table and a database outage.

Guarantee: ARCHITECTURE.md#accepted-means-durable (a key is bound to its first text in the
database, `key_claims`, so every replica and every restart sees the same binding).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import anyio
import httpx
import pytest

from devstack import Stack
from tests.support import extra_api, native_only, stored_ids, wait_for

MakeStack = Callable[..., Stack]

_NAMESPACE = uuid.UUID("5b0d6a2e-6f0e-4c57-9a43-2f4f7d3c8e11")  # feedsvc.messages.posts
_OLD_SLOTS = 65_536  # the per-process, direct-mapped table the api had before the claims


async def _post(http: httpx.AsyncClient, author: str, key: str, text: str) -> httpx.Response:
    body = {"author": author, "text": text}
    return await http.post("/messages", json=body, headers={"Idempotency-Key": key})


async def _both(
    one: httpx.AsyncClient, two: httpx.AsyncClient, author: str, key: str
) -> dict[str, httpx.Response]:
    answers: dict[str, httpx.Response] = {}

    async def post(http: httpx.AsyncClient, text: str) -> None:
        answers[text] = await _post(http, author, key, text)

    async with anyio.create_task_group() as tg:
        tg.start_soon(post, one, f"{key} first")
        tg.start_soon(post, two, f"{key} second")
    return answers


@pytest.mark.slow
async def test_one_key_two_texts_on_two_replicas_one_is_refused(
    stack: Stack, client: httpx.AsyncClient, author: str
) -> None:
    """One key posted with two texts at once to two api replicas gets one 202 and one 422,
    and the text that got 202 is the one stored."""
    accepted: dict[str, str] = {}
    with extra_api(stack, "api-replica") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as other:
            for n in range(10):
                key = f"{uuid.uuid4()}-{n}"
                answers = await _both(client, other, author, key)
                statuses = sorted(r.status_code for r in answers.values())
                assert statuses == [202, 422], {t: r.text for t, r in answers.items()}
                won = next(t for t, r in answers.items() if r.status_code == 202)
                accepted[answers[won].json()["id"]] = won
    await wait_for(
        lambda: stored_ids(stack, author), lambda ids: set(ids) == set(accepted), 60, "stored"
    )
    for message_id, text in accepted.items():
        r = await client.get(f"/messages/{message_id}")
        assert r.status_code == 200 and r.json()["text"] == text


def _same_old_slot(author: str, key: str) -> str:
    """Another key whose message id took `key`'s slot in the old table (evicting it)."""
    wanted = _slot(uuid.uuid5(_NAMESPACE, f"{author}\n{key}"))
    for n in range(50 * _OLD_SLOTS):
        other = f"evict-{n}"
        if _slot(uuid.uuid5(_NAMESPACE, f"{author}\n{other}")) == wanted:
            return other
    raise AssertionError("no key shares the slot")


def _slot(message_id: uuid.UUID) -> int:
    return int.from_bytes(message_id.bytes[:8], "little") % _OLD_SLOTS


@pytest.mark.slow
@native_only  # stops the stack's writer
async def test_a_key_is_not_forgotten_when_other_keys_come_between(make_stack: MakeStack) -> None:
    """While the writer is stopped, a key's second text is refused after other keys were
    posted in between (one that took its slot in a direct-mapped table), and the first
    text is the one stored."""
    stack = make_stack()
    author = "e_" + uuid.uuid4().hex[:20]
    key = str(uuid.uuid4())
    writer = stack.service("writer")
    writer.terminate(30)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        first = await _post(http, author, key, "first")
        assert first.status_code == 202, first.text
        between = await _post(http, author, _same_old_slot(author, key), "in between")
        assert between.status_code == 202, between.text
        for n in range(20):
            r = await _post(http, author, f"more-{n}", f"more {n}")
            assert r.status_code == 202, r.text
        second = await _post(http, author, key, "second")
        assert second.status_code == 422, second.text
        stack.start_role("writer")
        await wait_for(
            lambda: stored_ids(stack, author), lambda ids: len(ids) == 22, 60, "22 stored"
        )
        got = await http.get(f"/messages/{first.json()['id']}")
        assert got.json()["text"] == "first"


@pytest.mark.slow
@native_only  # stops the database
async def test_a_keyed_post_without_the_database_is_503_and_an_unkeyed_one_202(
    make_stack: MakeStack,
) -> None:
    """With PostgreSQL stopped a keyed POST gets 503 with Retry-After (its key cannot be
    checked) while an unkeyed POST still gets 202."""
    stack = make_stack()
    author = "d_" + uuid.uuid4().hex[:20]
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        stack.postgres.stop()
        try:
            keyed = await _post(http, author, str(uuid.uuid4()), "keyed")
            assert keyed.status_code == 503, keyed.text
            assert int(keyed.headers["retry-after"]) >= 1
            assert "Idempotency-Key" in keyed.json()["detail"]
            plain = await http.post("/messages", json={"author": author, "text": "plain"})
            assert plain.status_code == 202, plain.text
        finally:
            stack.postgres.start()
        await wait_for(
            lambda: stored_ids(stack, author),
            lambda ids: ids == [plain.json()["id"]],
            60,
            "the unkeyed one stored",
        )
