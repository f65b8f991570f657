"""The submitter: one deadline per request, and what an Idempotency-Key already used gets."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from aiokafka.errors import KafkaConnectionError

from feedsvc.http.admission import Admission, Refusal
from feedsvc.http.idempotency import KeyLedger, KeyReused
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
    assert len(sub.ledger) == 0


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
    assert sub.ledger.get(keyed("second", "k2").id) is None


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
