"""`MessageStore.claim` on a real PostgreSQL: one binding per id, whoever asks, at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from devstack import Postgres
from feedsvc import schema
from feedsvc.messages import KeyClaim, Message, text_digest
from feedsvc.store import MessageStore
from tests.support import native_only

pytestmark = [pytest.mark.stack, native_only]


@pytest.fixture
async def url(postgres: Postgres) -> str:
    """A database of the test's own, with the schema."""
    url = postgres.url("t_" + uuid.uuid4().hex[:12])
    schema.ensure_database(url)
    with psycopg.connect(url, autocommit=True) as conn:
        schema.ensure_schema(conn)
    return url


async def _stores(url: str, count: int) -> AsyncIterator[list[MessageStore]]:
    pools = [AsyncConnectionPool(url, min_size=1, max_size=1, open=False) for _ in range(count)]
    for pool in pools:
        await pool.open(wait=True)
    try:
        yield [MessageStore(pool) for pool in pools]
    finally:
        for pool in pools:
            await pool.close()


def _claim(message_id: uuid.UUID, text: str, age_s: float = 0) -> KeyClaim:
    return KeyClaim(message_id, text_digest(text), datetime.now(UTC) - timedelta(seconds=age_s))


async def test_concurrent_claims_of_one_id_all_get_the_same_winner(url: str) -> None:
    """Eight connections claiming one id with eight texts at once all get one binding back."""
    message_id = uuid.uuid4()
    got: list[KeyClaim] = []
    async for stores in _stores(url, 8):

        async def claim(store: MessageStore, n: int) -> None:
            bound, stored = (await store.claim([_claim(message_id, f"text {n}")]))[message_id]
            assert not stored
            got.append(bound)

        async with anyio.create_task_group() as tg:
            for n, store in enumerate(stores):
                tg.start_soon(claim, store, n)
    assert len(got) == 8 and len(set(got)) == 1
    assert got[0].digest in {text_digest(f"text {n}") for n in range(8)}


async def test_a_claim_says_whether_its_message_is_stored(url: str) -> None:
    """Several ids in one statement: new ones bound as given, an old one as first bound, and
    each says whether `messages` has its id."""
    old, new = uuid.uuid4(), uuid.uuid4()
    first = _claim(old, "first", age_s=60)
    async for (store,) in _stores(url, 1):
        await store.claim([first])
        await store.insert([Message(old, "ada", "first", first.created_at)])
        fresh = _claim(new, "new")
        got = await store.claim([_claim(old, "second"), fresh])
    assert got == {old: (first, True), new: (fresh, False)}
