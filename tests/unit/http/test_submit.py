"""The submitter: one deadline per request, and what an Idempotency-Key already used gets."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from aiokafka.errors import KafkaConnectionError

from feedsvc.http.admission import Admission, Refusal
from feedsvc.http.idempotency import KeyClaims, KeyReused
from feedsvc.http.submit import Gate, Keys, Producer, Submitter
from feedsvc.kafka import RenewingProducer
from feedsvc.messages import Message, Submission, new_message
from feedsvc.metrics import Metrics
from feedsvc.store import MessageStore
from tests.unit.http.fakes import FakeKeys, FakeProducer, sample


def submitter(
    producer: FakeProducer,
    timeout_s: float = 1.0,
    admission: Admission | None = None,
    metrics: Metrics | None = None,
) -> Submitter:
    return Submitter(
        producer,
        admission or Admission(max_inflight=10, max_backlog=10),
        metrics or Metrics(),
        timeout_s,
    )


def keyed(text: str, key: str = "key-1") -> Message:
    return new_message(Submission(author="ada", text=text), key)


async def test_send_answers_by_the_deadline() -> None:
    """Kafka never acknowledging: 503 by the request's deadline, counted against Kafka."""
    admission = Admission(max_inflight=10, max_backlog=10)
    sub = submitter(FakeProducer(hang=True), timeout_s=0.5, admission=admission)
    began = time.monotonic()
    with pytest.raises(Refusal) as caught:
        await sub.submit(keyed("hi"), sub.deadline())
    assert (caught.value.status, caught.value.retry_after_s) == (503, 2)
    assert time.monotonic() - began <= 0.5
    assert admission.inflight == 0
    admission.kafka_failed()
    assert not admission.kafka_reachable  # the timed-out send was the first failure


async def test_key_lookup_and_send_share_one_deadline() -> None:
    """A database and Kafka that both hang still get the answer out within the timeout."""
    sub = submitter(FakeProducer(hang=True), timeout_s=0.5)
    began = time.monotonic()
    with pytest.raises(Refusal):
        await sub.submit(keyed("hi"), sub.deadline(), FakeKeys(hang=True))
    assert time.monotonic() - began <= 0.5


async def test_hung_key_lookup_still_sends() -> None:
    """A database that does not answer costs a fifth of the budget; the message is sent."""
    producer, metrics = FakeProducer(), Metrics()
    sub = submitter(producer, timeout_s=1.0, metrics=metrics)
    began = time.monotonic()
    message = keyed("hi")
    assert await sub.submit(message, sub.deadline(), FakeKeys(hang=True)) == message
    assert 0.2 <= time.monotonic() - began < 0.5
    assert producer.sent == [message]
    assert sample(metrics, "feedsvc_idempotency_unchecked_total") == 1


async def test_starved_send_does_not_mark_kafka_down() -> None:
    """A send left almost no time by the rest of the request answers 503 but blames no one."""
    admission = Admission(max_inflight=10, max_backlog=10)
    sub = submitter(FakeProducer(hang=True), timeout_s=1.0, admission=admission)
    deadline = asyncio.get_running_loop().time() + 0.05
    for _ in range(3):
        with pytest.raises(Refusal):
            await sub.submit(keyed("hi"), deadline)
    assert admission.kafka_reachable


async def test_key_reused_for_a_stored_message_with_other_text_is_refused() -> None:
    """The key's message is stored with another text: KeyReused, nothing sent."""
    producer = FakeProducer()
    sub = submitter(producer)
    first = keyed("first")
    with pytest.raises(KeyReused):
        await sub.submit(keyed("second"), sub.deadline(), FakeKeys({first.id: first}))
    assert producer.sent == []


async def test_key_repeated_for_a_stored_message_gets_the_stored_one() -> None:
    """Same key, same text, already stored: the stored message (its created_at), nothing sent."""
    producer = FakeProducer()
    sub = submitter(producer)
    stored = keyed("same")
    stored = Message(stored.id, stored.author, stored.text, datetime.now(UTC) - timedelta(hours=1))
    got = await sub.submit(keyed("same"), sub.deadline(), FakeKeys({stored.id: stored}))
    assert got == stored
    assert producer.sent == []


async def test_key_in_flight_here_is_checked_before_the_store_has_it() -> None:
    """While the first send waits on Kafka, another text is refused and the same text resent."""
    gate = anyio.Event()
    producer = FakeProducer(gate=gate)
    sub = submitter(producer, timeout_s=5)
    empty = FakeKeys()
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
    assert sub.claims.get(message.id) is None


async def test_full_inflight_is_refused_before_any_lookup_or_send() -> None:
    """With every slot taken by a send waiting on Kafka, the next POST is 429 at once."""
    gate = anyio.Event()
    producer, keys = FakeProducer(gate=gate), FakeKeys()
    admission = Admission(max_inflight=1, max_backlog=10)
    sub = submitter(producer, timeout_s=5, admission=admission)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.submit, keyed("first", "k1"), sub.deadline(), keys)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(Refusal) as caught:
            await sub.submit(keyed("second", "k2"), sub.deadline(), keys)
        assert (caught.value.status, caught.value.retry_after_s) == (429, 1)
        assert (keys.lookups, producer.calls) == (1, 1)  # the first one's only
        gate.set()
    assert admission.inflight == 0
    assert sub.claims.get(keyed("second", "k2").id) is None


async def test_writer_backlog_over_its_limit_is_refused_with_the_drain_estimate() -> None:
    """The writer behind by more than the limit: 429 with Retry-After from its drain rate."""
    producer = FakeProducer()
    admission = Admission(max_inflight=10, max_backlog=100)
    admission.backlog, admission.drain_per_s = 400, 100.0
    sub = submitter(producer, admission=admission)
    with pytest.raises(Refusal) as caught:
        await sub.submit(keyed("hi"), sub.deadline())
    assert (caught.value.status, caught.value.retry_after_s) == (429, 3)
    assert producer.calls == 0 and admission.inflight == 0


async def test_kafka_errors_answer_503_and_two_in_a_row_stop_sending() -> None:
    """A send Kafka refuses is 503; after two, POSTs are refused without trying Kafka."""
    producer = FakeProducer(failures=[KafkaConnectionError("down")] * 2)
    admission = Admission(max_inflight=10, max_backlog=10)
    sub = submitter(producer, admission=admission)
    for _ in range(3):
        with pytest.raises(Refusal) as caught:
            await sub.submit(keyed("hi"), sub.deadline())
        assert (caught.value.status, caught.value.retry_after_s) == (503, 2)
    assert producer.calls == 2 and producer.sent == []
    assert admission.inflight == 0
    admission.kafka_ok()  # the backlog watcher reached Kafka again
    message = keyed("hi")
    assert await sub.submit(message, sub.deadline()) == message


async def test_a_keyed_send_kafka_refused_is_sent_again_on_retry() -> None:
    """A 503 never marks the key's message as delivered: its retry sends the same message."""
    producer = FakeProducer(failures=[KafkaConnectionError("blip")])
    sub = submitter(producer)
    first = keyed("hi")
    with pytest.raises(Refusal):
        await sub.submit(first, sub.deadline(), FakeKeys())
    retry = keyed("hi")
    assert await sub.submit(retry, sub.deadline(), FakeKeys()) == first
    assert producer.sent == [first]  # with the first attempt's created_at


def test_the_real_adapters_fit_the_submitters_protocols() -> None:
    """What the api wires in (the store comes through Litestar, unchecked) fits; mypy checks it."""
    wired: tuple[type[Producer], type[Gate], type[Keys]] = (
        RenewingProducer,
        Admission,
        MessageStore,
    )
    assert all(wired)


async def test_two_texts_for_one_key_during_the_lookup_one_is_refused() -> None:
    """Both requests find the database empty (it has not stored either yet): the key is
    claimed before the lookup, so the second text gets `KeyReused`, not a 202 whose
    message could never be stored."""
    gate = anyio.Event()

    class SlowKeys(FakeKeys):
        async def get(self, message_id: uuid.UUID) -> Message | None:
            await gate.wait()
            return await super().get(message_id)

    producer, keys = FakeProducer(), SlowKeys()
    sub = submitter(producer, timeout_s=5)
    outcomes: list[object] = []

    async def post(text: str) -> None:
        try:
            outcomes.append(await sub.submit(keyed(text), sub.deadline(), keys))
        except KeyReused as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(post, "first")
        tg.start_soon(post, "second")
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert [type(o) for o in outcomes] == [KeyReused, Message]
    assert [m.text for m in producer.sent] == ["first"]


def _claim_in_a_child(claims: KeyClaims, message: Message, out: Any) -> None:
    try:
        earlier = claims.claim(message)
        out.send(None if earlier is None else (earlier.message.created_at, earlier.acknowledged))
    except KeyReused:
        out.send("reused")


def _in_child(claims: KeyClaims, message: Message) -> object:
    """What `claims.claim(message)` gives in a forked process (another api worker)."""
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    child = ctx.Process(target=_claim_in_a_child, args=(claims, message, theirs))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    return mine.recv()


def test_claims_are_shared_with_forked_workers() -> None:
    """A key claimed in one process binds it in the others: another text is refused
    there, the same text gets the first one's `created_at`, and settling shows."""
    claims = KeyClaims(slots=64)
    first = keyed("first")
    assert claims.claim(first) is None
    assert _in_child(claims, keyed("second")) == "reused"
    again = keyed("first")
    assert again.created_at != first.created_at
    assert _in_child(claims, again) == (first.created_at, False)
    claims.settle(first)
    assert _in_child(claims, again) == (first.created_at, True)
    assert _in_child(claims, keyed("other key", "key-2")) is None  # a free key is claimed
    assert claims.get(keyed("x", "key-2").id) is not None


def test_a_lock_left_by_a_dead_process_blocks_no_one() -> None:
    """A worker killed inside a claim holds its slot's lock; the kernel releases it."""
    claims = KeyClaims(slots=1)
    message = keyed("first")

    def die_holding_the_lock() -> None:
        claims._slot(message.id).__enter__()
        os.kill(os.getpid(), signal.SIGKILL)

    child = multiprocessing.get_context("fork").Process(target=die_holding_the_lock)
    child.start()
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    assert claims.claim(message) is None  # would block for good if the lock were kept


def test_a_newer_key_on_the_same_slot_replaces_the_older() -> None:
    """Bounded: with one slot, the second key's claim forgets the first (the database then
    answers for it once stored)."""
    claims = KeyClaims(slots=1)
    a, b = keyed("a", "ka"), keyed("b", "kb")
    assert claims.claim(a) is None
    claims.settle(a)
    assert claims.claim(b) is None
    assert claims.get(a.id) is None
    assert claims.get(b.id) is not None
    assert claims.claim(keyed("a changed", "ka")) is None  # forgotten: claimed anew
