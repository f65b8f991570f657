"""The api's and the writer's producer: a refused idempotent session is replaced, not kept."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber

from feedsvc.kafka import RenewingProducer


class FakeClient:
    """Stands in for AIOKafkaProducer: records sends, raises `fail` while it is set."""

    def __init__(self, name: str, fail: Exception | None = None) -> None:
        self.name = name
        self.fail = fail
        self.sent: list[bytes] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send_and_wait(self, topic: str, value: bytes, **options: Any) -> str:
        if self.fail is not None:
            raise self.fail
        self.sent.append(value)
        return self.name


def _producer(*clients: FakeClient) -> tuple[RenewingProducer, list[FakeClient]]:
    made: list[FakeClient] = []
    queue = list(clients)

    def factory() -> Any:
        made.append(queue.pop(0))
        return made[-1]

    return RenewingProducer(factory), made


async def _renewed(producer: RenewingProducer, count: int) -> None:
    # The renewal runs as a task of its own; let it run, boundedly.
    with anyio.fail_after(5):
        for _ in range(500):
            if producer.renewals >= count:
                return
            await anyio.sleep(0.01)


async def test_a_refused_session_is_replaced_and_later_sends_go_through() -> None:
    """OutOfOrderSequenceNumber: that send fails, a new session starts, the next send works."""
    stuck = FakeClient("first", fail=OutOfOrderSequenceNumber())
    producer, made = _producer(stuck, FakeClient("second"))
    await producer.start()
    with pytest.raises(OutOfOrderSequenceNumber):
        await producer.send_and_wait("t", b"a")
    await _renewed(producer, 1)
    assert await producer.send_and_wait("t", b"b") == "second"
    assert stuck.stopped and made[1].sent == [b"b"]
    await producer.stop()
    assert made[1].stopped


async def test_many_refusals_at_once_start_one_new_session() -> None:
    """Concurrent sends refused together renew the session once."""
    producer, made = _producer(
        FakeClient("first", fail=OutOfOrderSequenceNumber()), FakeClient("second")
    )
    await producer.start()
    for _ in range(10):
        with pytest.raises(OutOfOrderSequenceNumber):
            await producer.send_and_wait("t", b"x")
    await _renewed(producer, 1)
    assert [c.name for c in made] == ["first", "second"]
    await producer.stop()


async def test_an_ordinary_kafka_error_keeps_the_session() -> None:
    """A timeout (broker down) is not a lost session: no renewal."""
    producer, made = _producer(FakeClient("first", fail=KafkaTimeoutError()))
    await producer.start()
    with pytest.raises(KafkaTimeoutError):
        await producer.send_and_wait("t", b"x")
    await anyio.sleep(0.05)
    assert producer.renewals == 0 and len(made) == 1
    await producer.stop()
