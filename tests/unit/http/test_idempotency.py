"""Key claims: one statement for the claims waiting at once, the first text wins, no guess."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import psycopg
import pytest

from feedsvc.http.idempotency import Bound, KeyClaims, KeyReused, KeyUnchecked
from feedsvc.messages import Message, Submission, new_message
from tests.unit.http.fakes import FakeClaimStore


def keyed(text: str, key: str = "key-1") -> Message:
    return new_message(Submission(author="ada", text=text), key)


@asynccontextmanager
async def running(store: FakeClaimStore, quiet_s: float = 0) -> AsyncIterator[KeyClaims]:
    """Key claims over `store`, answering while the block runs."""
    claims = KeyClaims(store, quiet_s)
    async with anyio.create_task_group() as tg:
        tg.start_soon(claims.run)
        yield claims
        tg.cancel_scope.cancel()


def soon(seconds: float = 5) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_claims_waiting_at_once_share_one_statement() -> None:
    """Claims made while a statement runs go together into the next one."""
    gate = anyio.Event()
    store = FakeClaimStore(gate=gate)
    answers: list[Bound] = []

    async def claim(claims: KeyClaims, n: int) -> None:
        answers.append(await claims.claim(keyed(f"text {n}", f"key-{n}"), soon()))

    async with running(store) as claims, anyio.create_task_group() as tg:
        tg.start_soon(claim, claims, 0)
        await anyio.wait_all_tasks_blocked()  # statement 1 runs, held at the gate
        for n in range(1, 50):
            tg.start_soon(claim, claims, n)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert [len(ids) for ids in store.statements] == [1, 49]
    assert len(answers) == 50


async def test_two_texts_for_one_key_at_once_the_first_wins() -> None:
    """One key with two texts in the same statement: the first is bound, the second is
    refused, and the statement names the id once."""
    gate = anyio.Event()
    store = FakeClaimStore(gate=gate)
    outcomes: dict[str, object] = {}

    async def claim(claims: KeyClaims, text: str, key: str = "key-1") -> None:
        try:
            outcomes[text] = await claims.claim(keyed(text, key), soon())
        except KeyReused as exc:
            outcomes[text] = exc

    async with running(store) as claims, anyio.create_task_group() as tg:
        tg.start_soon(claim, claims, "warm-up", "key-0")  # holds statement 1 at the gate
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(claim, claims, "first")
        tg.start_soon(claim, claims, "second")
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert isinstance(outcomes["first"], Bound) and outcomes["first"].message.text == "first"
    assert isinstance(outcomes["second"], KeyReused)
    assert store.statements[1] == [keyed("x").id]


async def test_the_same_text_again_gets_the_first_created_at() -> None:
    """A retry with the same text is bound to the first request's message, not stored yet."""
    store = FakeClaimStore()
    first = keyed("same")
    async with running(store) as claims:
        assert await claims.claim(first, soon()) == Bound(first, stored=False)
        again = keyed("same")
        assert again.created_at != first.created_at
        assert await claims.claim(again, soon()) == Bound(first, stored=False)
        store.stored.add(first.id)
        assert await claims.claim(keyed("same"), soon()) == Bound(first, stored=True)
        with pytest.raises(KeyReused):
            await claims.claim(keyed("other"), soon())


async def test_a_database_error_leaves_the_key_unchecked() -> None:
    """A statement the database refuses or cannot run answers every claim in it with
    KeyUnchecked, and the next claim is tried afresh."""
    store = FakeClaimStore(failures=[psycopg.OperationalError("connection refused")])
    async with running(store) as claims:
        with pytest.raises(KeyUnchecked):
            await claims.claim(keyed("first"), soon())
        retry = keyed("first")
        assert await claims.claim(retry, soon()) == Bound(retry, stored=False)
    assert len(store.statements) == 2


async def test_a_database_that_never_answers_is_unchecked_by_the_deadline() -> None:
    """A hung statement: each claim gives up at its own deadline, and none is left waiting."""
    store = FakeClaimStore(hang=True)
    async with running(store) as claims:
        began = asyncio.get_running_loop().time()
        for text in ("first", "second", "third"):
            with pytest.raises(KeyUnchecked):
                await claims.claim(keyed(text, text), soon(0.1))
        assert asyncio.get_running_loop().time() - began < 1
        assert claims.waiting == 0
    assert len(store.statements) == 1  # the later two never reached the database


async def test_after_a_failure_claims_are_refused_at_once_for_a_while() -> None:
    """Once a claim found the database failing, the next ones are refused without a
    statement until the quiet time is over (with none, the next one tries again)."""
    store = FakeClaimStore(failures=[psycopg.OperationalError("connection refused")])
    async with running(store, quiet_s=60) as claims:
        with pytest.raises(KeyUnchecked):
            await claims.claim(keyed("first"), soon())
        began = asyncio.get_running_loop().time()
        with pytest.raises(KeyUnchecked):
            await claims.claim(keyed("first"), soon())
        assert asyncio.get_running_loop().time() - began < 0.05
    assert len(store.statements) == 1
