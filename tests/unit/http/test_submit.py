"""The submitter: one deadline per request, and what an Idempotency-Key already claimed gets."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from aiokafka.errors import KafkaConnectionError

from feedsvc.http.admission import Admission, Refusal
from feedsvc.http.idempotency import ClaimStore, KeyClaims, KeyReused
from feedsvc.http.submit import Claims, Gate, Producer, Submitter
from feedsvc.kafka import RenewingProducer
from feedsvc.messages import Message, Submission, new_message
from feedsvc.metrics import Metrics
from feedsvc.store import MessageStore
from tests.unit.http.fakes import FakeClaims, FakeProducer


def submitter(
    producer: FakeProducer,
    timeout_s: float = 1.0,
    admission: Admission | None = None,
    metrics: Metrics | None = None,
    claims: FakeClaims | None = None,
) -> Submitter:
    return Submitter(
        producer,
        admission or Admission(max_inflight=10, max_backlog=10),
        metrics or Metrics(),
        timeout_s,
        claims or FakeClaims(),
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


async def test_an_unanswered_claim_is_503_by_half_the_budget_and_nothing_is_sent() -> None:
    """A database that does not answer the key's claim: 503 with Retry-After within half the
    timeout, nothing sent (an unchecked key could let a second text in elsewhere)."""
    producer, metrics = FakeProducer(), Metrics()
    sub = submitter(producer, timeout_s=1.0, metrics=metrics, claims=FakeClaims(hang=True))
    began = time.monotonic()
    with pytest.raises(Refusal) as caught:
        await sub.submit(keyed("hi"), sub.deadline(), keyed=True)
    assert 0.4 <= time.monotonic() - began < 0.7
    assert (caught.value.status, caught.value.retry_after_s) == (503, 2)
    assert "Idempotency-Key" in caught.value.reason
    assert producer.calls == 0


async def test_starved_send_does_not_mark_kafka_down() -> None:
    """A send left almost no time by the rest of the request answers 503 but blames no one."""
    admission = Admission(max_inflight=10, max_backlog=10)
    sub = submitter(FakeProducer(hang=True), timeout_s=1.0, admission=admission)
    deadline = asyncio.get_running_loop().time() + 0.05
    for _ in range(3):
        with pytest.raises(Refusal):
            await sub.submit(keyed("hi"), deadline)
    assert admission.kafka_reachable


async def test_key_bound_to_another_text_is_refused() -> None:
    """The key is bound to another text: KeyReused, nothing sent."""
    producer = FakeProducer()
    first = keyed("first")
    sub = submitter(producer, claims=FakeClaims({first.id: first}))
    with pytest.raises(KeyReused):
        await sub.submit(keyed("second"), sub.deadline(), keyed=True)
    assert producer.sent == []


async def test_key_repeated_for_a_stored_message_gets_the_first_one() -> None:
    """Same key, same text, already stored: the first message (its created_at), nothing sent."""
    producer = FakeProducer()
    first = keyed("same")
    first = Message(first.id, first.author, first.text, datetime.now(UTC) - timedelta(hours=1))
    sub = submitter(producer, claims=FakeClaims({first.id: first}, stored={first.id}))
    assert await sub.submit(keyed("same"), sub.deadline(), keyed=True) == first
    assert producer.sent == []


async def test_key_repeated_before_it_is_stored_sends_the_first_record_again() -> None:
    """Same key, same text, not stored yet: the first message is sent again, with its
    created_at (the writer's insert-if-absent stores it once)."""
    producer = FakeProducer()
    first = keyed("same")
    first = Message(first.id, first.author, first.text, datetime.now(UTC) - timedelta(seconds=5))
    sub = submitter(producer, claims=FakeClaims({first.id: first}))
    assert await sub.submit(keyed("same"), sub.deadline(), keyed=True) == first
    assert producer.sent == [first]


async def test_unkeyed_posts_are_never_claimed() -> None:
    """Without a key nothing is claimed and every post is sent."""
    producer, claims = FakeProducer(), FakeClaims()
    sub = submitter(producer, claims=claims)
    message = new_message(Submission(author="ada", text="hi"))
    await sub.submit(message, sub.deadline())
    assert producer.sent == [message]
    assert claims.calls == 0


async def test_full_inflight_is_refused_before_any_lookup_or_send() -> None:
    """With every slot taken by a send waiting on Kafka, the next POST is 429 at once."""
    gate = anyio.Event()
    producer, claims = FakeProducer(gate=gate), FakeClaims()
    admission = Admission(max_inflight=1, max_backlog=10)
    sub = submitter(producer, timeout_s=5, admission=admission, claims=claims)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.submit, keyed("first", "k1"), sub.deadline(), True)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(Refusal) as caught:
            await sub.submit(keyed("second", "k2"), sub.deadline(), keyed=True)
        assert (caught.value.status, caught.value.retry_after_s) == (429, 1)
        assert (claims.calls, producer.calls) == (1, 1)  # the first one's only
        gate.set()
    assert admission.inflight == 0


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
        await sub.submit(first, sub.deadline(), keyed=True)
    retry = keyed("hi")
    assert await sub.submit(retry, sub.deadline(), keyed=True) == first
    assert producer.sent == [first]  # with the first attempt's created_at


def test_the_real_adapters_fit_the_submitters_protocols() -> None:
    """What the api wires in fits the protocols the submitter and the claims use; mypy checks it."""
    wired: tuple[type[Producer], type[Gate], type[Claims], type[ClaimStore]] = (
        RenewingProducer,
        Admission,
        KeyClaims,
        MessageStore,
    )
    assert all(wired)
