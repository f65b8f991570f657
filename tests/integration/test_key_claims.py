"""`MessageStore.claim` on a real PostgreSQL: one binding per id, whoever asks, at once; the
unit tests' fake keeps the same contract."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from devstack import Postgres
from feedsvc import schema
from feedsvc.http.idempotency import ClaimStore
from feedsvc.messages import KeyClaim, Message, text_digest
from feedsvc.store import MessageStore
from tests.support import native_only
from tests.unit.http.fakes import FakeClaimStore

pytestmark = [pytest.mark.stack, native_only]


@pytest.fixture
async def url(postgres: Postgres) -> str:
    """A database of the test's own, with the schema."""
    url = postgres.url("t_" + uuid.uuid4().hex[:12])
    schema.ensure_database(url)
    with psycopg.connect(url, autocommit=True) as conn:
        schema.ensure_schema(conn)
    return url


@asynccontextmanager
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
    async with _stores(url, 8) as stores:

        async def claim(store: MessageStore, n: int) -> None:
            bound, stored = (await store.claim([_claim(message_id, f"text {n}")]))[message_id]
            assert not stored
            got.append(bound)

        async with anyio.create_task_group() as tg:
            for n, store in enumerate(stores):
                tg.start_soon(claim, store, n)
    assert len(got) == 8 and len(set(got)) == 1
    assert got[0].digest in {text_digest(f"text {n}") for n in range(8)}


@pytest.fixture(params=["postgres", "fake"])
async def store(request: pytest.FixtureRequest, url: str) -> AsyncIterator[ClaimsUnderTest]:
    """The real store and the unit tests' fake, for the one contract both must keep."""
    if request.param == "fake":
        fake = FakeClaimStore()

        async def stored_fake(message: Message) -> None:
            fake.stored.add(message.id)

        yield ClaimsUnderTest(fake, stored_fake)
        return
    async with _stores(url, 1) as (real,):
        yield ClaimsUnderTest(real, lambda message: real.insert([message]))


@dataclass(frozen=True)
class ClaimsUnderTest:
    claims: ClaimStore
    store_message: Callable[[Message], Awaitable[object]]


async def test_a_claim_says_whether_its_message_is_stored(store: ClaimsUnderTest) -> None:
    """Several ids in one statement: new ones bound as given, an old one as first bound, and
    each says whether `messages` has its id."""
    old, new = uuid.uuid4(), uuid.uuid4()
    first = _claim(old, "first", age_s=60)
    await store.claims.claim([first])
    await store.store_message(Message(old, "ada", "first", first.created_at))
    fresh = _claim(new, "new")
    got = await store.claims.claim([_claim(old, "second"), fresh])
    assert got == {old: (first, True), new: (fresh, False)}
