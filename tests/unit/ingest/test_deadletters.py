"""Dead letters are bounded whatever the record, and a Kafka outage never skips one."""

from __future__ import annotations

import base64
import hashlib

import anyio
import pytest
from aiokafka.errors import KafkaConnectionError

from feedsvc.ingest import retry
from feedsvc.ingest.deadletters import DEAD_LETTERS_TOTAL, DeadLetters
from feedsvc.ingest.retry import BatchAbandoned
from feedsvc.messages import DEAD_LETTER_HEAD_BYTES, dead_letter, encode
from feedsvc.metrics import Metrics
from tests.unit.ingest.fakes import FakeProducer


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "FIRST_DELAY_S", 0.001)


def test_a_huge_record_makes_a_small_letter() -> None:
    """200 KB of control bytes and a huge key and reason: a letter of a few KiB that names them."""
    value = bytes(range(32)) * 6400  # 204,800 bytes, JSON-escaped ~6x as text
    letter = dead_letter(
        "messages.submitted", 3, 42, b"\x01" * 100_000, value, "decode", "\x02" * 10_000
    )
    assert len(encode(letter)) < 6 * 1024
    assert base64.b64decode(letter.value_head) == value[:DEAD_LETTER_HEAD_BYTES]
    assert (letter.value_size, letter.value_sha256) == (
        len(value),
        hashlib.sha256(value).hexdigest(),
    )
    assert letter.key_size == 100_000
    assert (letter.partition, letter.offset, letter.stage) == (3, 42, "decode")


def test_a_small_record_survives_whole() -> None:
    """Any bytes, exactly: base64 of a record under the head size is the record."""
    value = b"\xff\x00{not json"
    letter = dead_letter("messages.submitted", 0, 1, None, value, "decode", "bad")
    assert base64.b64decode(letter.value_head) == value
    assert letter.key_head is None and letter.key_size == 0


async def test_kafka_down_is_waited_out_and_every_letter_sent_once_counted() -> None:
    """Failed sends are retried until acknowledged; each letter is counted once."""
    events: list[str] = []
    producer = FakeProducer(events, [KafkaConnectionError("down")] * 3)
    metrics = Metrics()
    letters = [dead_letter("messages.submitted", 0, o, b"k", b"x", "decode", "r") for o in (4, 7)]
    await DeadLetters(producer, 1.0, metrics).send(letters, anyio.Event())
    assert [letter.offset for letter in producer.sent] == [4, 7]
    assert (metrics.registry.get_sample_value(DEAD_LETTERS_TOTAL, {"stage": "decode"}) or 0) == 2


async def test_a_send_that_hangs_times_out_and_is_retried() -> None:
    """A send that never returns (aiokafka with a broker away) is bounded and tried again."""
    events: list[str] = []

    class Hanging(FakeProducer):
        calls = 0

        async def send_and_wait(self, topic: str, value: bytes) -> None:
            self.calls += 1
            if self.calls == 1:
                await anyio.sleep_forever()
            await super().send_and_wait(topic, value)

    producer = Hanging(events)
    letter = dead_letter("messages.submitted", 0, 1, None, b"x", "decode", "r")
    with anyio.fail_after(10):
        await DeadLetters(producer, 0.2, Metrics()).send([letter], anyio.Event())
    assert producer.calls == 2 and len(producer.sent) == 1


async def test_stopping_while_kafka_is_down_abandons_without_counting() -> None:
    """Told to stop during the outage: BatchAbandoned, nothing counted as sent."""
    producer = FakeProducer([])
    producer.down = KafkaConnectionError("down")
    metrics = Metrics()
    stopping = anyio.Event()
    stopping.set()
    letter = dead_letter("messages.submitted", 0, 1, None, b"x", "decode", "r")
    with anyio.fail_after(10), pytest.raises(BatchAbandoned):
        await DeadLetters(producer, 1.0, metrics).send([letter], stopping)
    assert (metrics.registry.get_sample_value(DEAD_LETTERS_TOTAL, {"stage": "decode"}) or 0) == 0
