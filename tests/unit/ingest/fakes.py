"""Hand-written fakes of what the writer uses: its consumer, the store and the DLQ producer.

Each implements the same small Protocol as the real adapter (`Source`, `Store`,
`Producer`) and appends what it was asked to do to one shared `events` list, so a
test can check the order of insert, dead letter and commit; `Parts` wires a real
`Writer` to them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import anyio
import msgspec
import psycopg
from aiokafka import TopicPartition

from feedsvc.ingest.deadletters import DeadLetters
from feedsvc.ingest.writer import Writer
from feedsvc.messages import DeadLetter, Message, Submission, new_message
from feedsvc.metrics import Metrics

TOPIC = "messages.submitted"


class Record(NamedTuple):
    """The fields of an aiokafka ConsumerRecord the writer reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def record(
    offset: int, value: bytes | None, key: bytes | None = b"ada", partition: int = 0
) -> Record:
    return Record(TOPIC, partition, offset, key, value)


def message(text: str, author: str = "ada") -> Message:
    return new_message(Submission(author=author, text=text))


class FakeStore:
    """A message table that refuses, like PostgreSQL, any text with NUL in it.

    `failures` are raised first, one per insert call, whatever the rows.
    """

    def __init__(self, events: list[str], failures: Sequence[Exception] = ()) -> None:
        self.events = events
        self.failures = list(failures)
        self.rows: dict[Any, Message] = {}
        self.calls: list[int] = []

    async def insert(self, messages: Sequence[Message]) -> int:
        self.calls.append(len(messages))
        if self.failures:
            raise self.failures.pop(0)
        if any("\x00" in m.text for m in messages):
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        new = [m for m in messages if m.id not in self.rows]
        for m in new:
            self.rows[m.id] = m
        self.events.append(f"insert {len(messages)}")
        return len(new)


class FakeProducer:
    """A DLQ producer whose first sends fail as given (or every send, with `down`)."""

    def __init__(self, events: list[str], failures: Sequence[Exception] = ()) -> None:
        self.events = events
        self.failures = list(failures)
        self.down: Exception | None = None
        self.sent: list[DeadLetter] = []

    async def send_and_wait(self, topic: str, value: bytes) -> None:
        assert topic == "messages.dlq"
        if self.down is not None:
            raise self.down
        if self.failures:
            raise self.failures.pop(0)
        letter = msgspec.json.decode(value, type=DeadLetter)
        self.sent.append(letter)
        self.events.append(f"dlq {letter.offset}")


class FakeSource:
    """A group consumer that hands out the given batches, then nothing.

    `raises` are raised by `getmany` first, one per call; `commit_failures` by `commit`
    (an exception, or None for a commit that never returns).
    """

    def __init__(
        self,
        events: list[str],
        batches: Sequence[Sequence[Record]] = (),
        raises: Sequence[Exception] = (),
        earliest: int = 0,
        on_empty: Callable[[], None] | None = None,
    ) -> None:
        self.events = events
        self.batches = [list(b) for b in batches]
        self.raises = list(raises)
        self.earliest = earliest
        self.on_empty = on_empty
        self.committed: dict[Any, int] = {}
        self.seeks: list[Any] = []
        self.commit_failures: list[Exception | None] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        if self.raises:
            raise self.raises.pop(0)
        if not self.batches:
            if self.on_empty is not None:
                self.on_empty()
            return {}
        batch = self.batches.pop(0)
        by_partition: dict[Any, list[Any]] = {}
        for r in batch:
            by_partition.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return by_partition

    async def commit(self, offsets: dict[Any, int]) -> None:
        if self.commit_failures:
            failure = self.commit_failures.pop(0)
            if failure is not None:
                raise failure
            await anyio.sleep_forever()
        self.committed.update(offsets)
        self.events.append("commit " + ",".join(f"{tp.partition}:{o}" for tp, o in offsets.items()))

    async def seek_to_beginning(self, *partitions: Any) -> None:
        self.seeks += partitions

    async def beginning_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(partitions, self.earliest)


class Parts:
    """A writer wired to fakes that share one event log."""

    def __init__(self, batches: list[list[Record]] | None = None) -> None:
        self.events: list[str] = []
        self.stopping = anyio.Event()
        self.source = FakeSource(self.events, batches or [], on_empty=self.stopping.set)
        self.store = FakeStore(self.events)
        self.producer = FakeProducer(self.events)
        self.metrics = Metrics()
        self.writer = Writer(
            self.source,
            self.store,
            DeadLetters(self.producer, 1.0, self.metrics),
            self.metrics,
            batch=500,
            linger_ms=1,
            kafka_timeout_s=1.0,
        )
