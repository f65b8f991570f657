"""The submitter: one deadline per request, and what an Idempotency-Key already used gets."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import anyio
import pytest

from feedsvc.http.admission import Admission, Refusal
from feedsvc.http.idempotency import KeyLedger, KeyReused
from feedsvc.http.submit import Submitter
from feedsvc.messages import Message, Submission, decode_message, new_message
from feedsvc.metrics import Metrics
from feedsvc.store import MessageStore


@dataclass
class FakeProducer:
    """Acknowledges each send at once, or when `gate` opens, or never (`hang`)."""

    hang: bool = False
    gate: anyio.Event | None = None
    sent: list[Message] = field(default_factory=list)

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        if self.hang:
            await anyio.sleep_forever()
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append(decode_message(value))


@dataclass
class FakeStore:
    """`MessageStore.get` over a dict, or one that never answers (`hang`).

    Note: a hung read, once cancelled, takes 2 s more to end, as psycopg's does
    while it asks a server that does not answer to cancel the query.
    """

    rows: dict[uuid.UUID, Message] = field(default_factory=dict)
    hang: bool = False

    async def get(self, message_id: uuid.UUID) -> Message | None:
        if self.hang:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.shield(asyncio.sleep(2))
                raise
        return self.rows.get(message_id)


def submitter(producer: FakeProducer, timeout_s: float = 1.0) -> Submitter:
    return Submitter(
        cast(Any, producer), Admission(max_inflight=10, max_backlog=10), Metrics(), timeout_s
    )


def keys(store: FakeStore) -> MessageStore:
    return cast(MessageStore, store)


def keyed(text: str, key: str = "key-1") -> Message:
    return new_message(Submission(author="ada", text=text), key)


async def test_send_answers_by_the_deadline() -> None:
    """Kafka never acknowledging: 503 by the request's deadline, counted against Kafka."""
    sub = submitter(FakeProducer(hang=True), timeout_s=0.5)
    began = time.monotonic()
    with pytest.raises(Refusal) as caught:
        await sub.submit(keyed("hi"), sub.deadline())
    assert caught.value.status == 503
    assert time.monotonic() - began <= 0.5
    assert sub.admission.inflight == 0
    sub.admission.kafka_failed()
    assert not sub.admission.kafka_reachable  # the timed-out send was the first failure


async def test_key_lookup_and_send_share_one_deadline() -> None:
    """A database and Kafka that both hang still get the answer out within the timeout."""
    sub = submitter(FakeProducer(hang=True), timeout_s=0.5)
    began = time.monotonic()
    with pytest.raises(Refusal):
        await sub.submit(keyed("hi"), sub.deadline(), keys(FakeStore(hang=True)))
    assert time.monotonic() - began <= 0.5


async def test_hung_key_lookup_still_sends() -> None:
    """A database that does not answer costs a fifth of the budget; the message is sent."""
    producer = FakeProducer()
    sub = submitter(producer, timeout_s=1.0)
    began = time.monotonic()
    message = keyed("hi")
    assert await sub.submit(message, sub.deadline(), keys(FakeStore(hang=True))) == message
    assert 0.2 <= time.monotonic() - began < 0.5
    assert producer.sent == [message]
    assert (sub.metrics.registry.get_sample_value("feedsvc_idempotency_unchecked_total") or 0) == 1


async def test_starved_send_does_not_mark_kafka_down() -> None:
    """A send left almost no time by the rest of the request answers 503 but blames no one."""
    sub = submitter(FakeProducer(hang=True), timeout_s=1.0)
    deadline = asyncio.get_running_loop().time() + 0.05
    for _ in range(3):
        with pytest.raises(Refusal):
            await sub.submit(keyed("hi"), deadline)
    assert sub.admission.kafka_reachable


async def test_key_reused_for_a_stored_message_with_other_text_is_refused() -> None:
    """The key's message is stored with another text: KeyReused, nothing sent."""
    producer = FakeProducer()
    sub = submitter(producer)
    first = keyed("first")
    with pytest.raises(KeyReused):
        await sub.submit(keyed("second"), sub.deadline(), keys(FakeStore({first.id: first})))
    assert producer.sent == []


async def test_key_repeated_for_a_stored_message_gets_the_stored_one() -> None:
    """Same key, same text, already stored: the stored message (its created_at), nothing sent."""
    producer = FakeProducer()
    sub = submitter(producer)
    stored = keyed("same")
    stored = Message(stored.id, stored.author, stored.text, datetime.now(UTC) - timedelta(hours=1))
    got = await sub.submit(keyed("same"), sub.deadline(), keys(FakeStore({stored.id: stored})))
    assert got == stored
    assert producer.sent == []


async def test_key_in_flight_here_is_checked_before_the_store_has_it() -> None:
    """While the first send waits on Kafka, another text is refused and the same text resent."""
    gate = anyio.Event()
    producer = FakeProducer(gate=gate)
    sub = submitter(producer, timeout_s=5)
    empty = keys(FakeStore())
    first = keyed("first")
    answers: list[Message] = []

    async def post(message: Message) -> None:
        answers.append(await sub.submit(message, sub.deadline(), empty))

    async with anyio.create_task_group() as tg:
        tg.start_soon(post, first)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(KeyReused):
            await sub.submit(keyed("other"), sub.deadline(), empty)
        tg.start_soon(post, keyed("first"))
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert answers == [first, first]  # the retry carries the first one's created_at
    assert producer.sent == [first, first]
    # Acknowledged now: a further retry is answered here, without another send.
    assert await sub.submit(keyed("first"), sub.deadline(), empty) == first
    with pytest.raises(KeyReused):
        await sub.submit(keyed("other"), sub.deadline(), empty)
    assert len(producer.sent) == 2


async def test_unkeyed_posts_are_never_looked_up() -> None:
    """Without a key nothing is remembered and every post is sent."""
    producer = FakeProducer()
    sub = submitter(producer)
    message = new_message(Submission(author="ada", text="hi"))
    await sub.submit(message, sub.deadline())
    assert producer.sent == [message]
    assert len(sub.ledger) == 0


def test_ledger_forgets_the_oldest_past_its_size() -> None:
    """The ledger is bounded: past its size the least recently sent key is forgotten."""
    ledger = KeyLedger(size=2)
    a, b, c = keyed("a", "ka"), keyed("b", "kb"), keyed("c", "kc")
    ledger.sending(a)
    ledger.acknowledged(b)
    ledger.acknowledged(a)
    ledger.sending(c)
    assert len(ledger) == 2
    assert ledger.get(b.id) is None
    assert ledger.get(a.id) is not None and ledger.get(a.id).acknowledged  # type: ignore[union-attr]
    assert ledger.get(c.id) is not None and not ledger.get(c.id).acknowledged  # type: ignore[union-attr]
