"""The writer: `messages.submitted` → decode → insert → dead letters → commit offsets."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from feedsvc.ingest.batch import Record, decode_batch, letter, request_id_of
from feedsvc.ingest.deadletters import DeadLetters
from feedsvc.ingest.isolation import Store, insert_isolating
from feedsvc.ingest.retry import BatchAbandoned, until_done
from feedsvc.metrics import Metrics
from feedsvc.tracing import OFF, Tracing

log = logging.getLogger(__name__)

# The names of its samples in `/metrics`.
STORED_TOTAL = "feedsvc_writer_stored_total"
OUT_OF_RANGE_TOTAL = "feedsvc_writer_offsets_out_of_range_total"
EXPIRED_TOTAL = "feedsvc_writer_records_expired_total"


class Source(Protocol):
    """What the writer needs of its group consumer (`AIOKafkaConsumer` is one)."""

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        """Records fetched since the last call, by partition."""
        ...

    async def commit(self, offsets: dict[Any, int]) -> None:
        """Commit the given next offsets of the group."""
        ...

    async def seek_to_beginning(self, *partitions: Any) -> Any:
        """Read the partitions again from their earliest retained record."""
        ...

    async def beginning_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        """The earliest retained offset of each partition."""
        ...


class Writer:
    """Stores every record of its partitions exactly once, or dead-letters it; commits last.

    Note: at-least-once consumption plus `ON CONFLICT (id) DO NOTHING` makes a
    redelivered batch (after a crash or a rebalance) a no-op, not a duplicate. A
    batch's offsets are committed only after its rows are stored and its dead letters
    acknowledged by Kafka.
    """

    def __init__(
        self,
        source: Source,
        store: Store,
        dead_letters: DeadLetters,
        metrics: Metrics,
        *,
        batch: int,
        linger_ms: int,
        kafka_timeout_s: float,
        tracing: Tracing = OFF,
    ) -> None:
        self.source = source
        self.tracing = tracing
        self.store = store
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.batch = batch
        self.linger_ms = linger_ms
        self.kafka_timeout_s = kafka_timeout_s
        self.stored = 0
        self.dead = 0
        self.counts = metrics.writer
        self.consuming = False
        self.retrying = False
        """A batch's insert or offset commit failed and is being tried again."""

    @property
    def ready(self) -> bool:
        """Consuming, and not retrying a batch's insert or commit (the database or Kafka away)."""
        return self.consuming and not self.retrying

    async def run(self, stopping: anyio.Event) -> None:
        """Consume until `stopping` is set; the batch in hand is finished first."""
        self.consuming = True
        try:
            await self._consume(stopping)
        finally:
            self.consuming = False

    async def _consume(self, stopping: anyio.Event) -> None:
        last_report, reported = time.monotonic(), (0, 0)
        while not stopping.is_set():
            try:
                fetched = await self.source.getmany(
                    timeout_ms=self.linger_ms, max_records=self.batch
                )
            except NoOffsetForPartitionError as exc:
                await self._start(exc.args[0])
                continue
            except OffsetOutOfRangeError as exc:
                await self._out_of_range(exc.args[0])
                continue
            records = [r for partition in fetched.values() for r in partition]
            if records:
                try:
                    await self.handle(records, stopping)
                except BatchAbandoned as exc:
                    log.warning(
                        "stopping with a batch unfinished; it will be read again",
                        extra={"rows": len(records), "during": exc.args[0]},
                    )
                    return
            if time.monotonic() - last_report >= 5 and (self.stored, self.dead) != reported:
                log.info(
                    "writer progress",
                    extra={
                        "stored_total": self.stored,
                        "dead_total": self.dead,
                        "stored_per_s": round(
                            (self.stored - reported[0]) / (time.monotonic() - last_report)
                        ),
                    },
                )
                last_report, reported = time.monotonic(), (self.stored, self.dead)

    async def handle(self, records: Sequence[Record], stopping: anyio.Event) -> None:
        """decode → insert (refused rows isolated) → dead letters → commit, in that order."""
        with self.tracing.batch(records):
            await self._handle(records, stopping)

    async def _handle(self, records: Sequence[Record], stopping: anyio.Event) -> None:
        self.counts.batch_size.observe(len(records))
        batch = decode_batch(records)
        started = time.perf_counter()
        refused = await insert_isolating(
            self.store, batch.messages, stopping, on_retry=self._retried
        )
        self.counts.insert_seconds.observe(time.perf_counter() - started)
        refused_ids = {message.id for message, _ in refused}
        now = time.time()
        traced = log.isEnabledFor(logging.DEBUG)
        for message in batch.messages:
            if message.id not in refused_ids:
                # The api's clock against ours: skew between hosts shows here.
                self.counts.accepted_to_stored.observe(now - message.created_at.timestamp())
                if traced:
                    # Joins the api's access log line of the post (docs/api.md#request-ids).
                    first = batch.records[message.id][0]
                    log.debug(
                        "stored",
                        extra={"id": str(message.id), "request_id": request_id_of(first)},
                    )
        dead = list(batch.dead)
        for message, exc in refused:
            first, *repeats = batch.records[message.id]
            dead.append(letter(first, "insert", f"the database refused it: {exc!r}"))
            dead += [
                letter(r, "insert", f"same id as offset {first.offset}, which was refused")
                for r in repeats
            ]
        dead.sort(key=lambda d: (d.partition, d.offset))
        await self.dead_letters.send(dead, stopping)
        await self._commit(records, stopping)
        self.retrying = False
        stored = sum(len(rs) for id_, rs in batch.records.items() if id_ not in refused_ids)
        self.counts.stored.inc(stored)
        self.stored += stored
        self.dead += len(dead)

    async def _commit(self, records: Sequence[Record], stopping: anyio.Event) -> None:
        offsets: dict[Any, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        try:
            # aiokafka retries a commit while the coordinator is away, without end.
            await until_done(
                lambda: self.source.commit(offsets),
                lambda exc: isinstance(exc, TimeoutError),
                stopping,
                "offset commit",
                self.kafka_timeout_s,
                on_retry=self._retried,
            )
        except KafkaError as exc:
            # The partitions moved to another writer, which re-reads from the last
            # commit; what we stored is stored, the repeat insert is a no-op.
            log.warning(
                "offset commit failed; the batch will be re-read", extra={"error": repr(exc)}
            )

    def _retried(self, operation: str) -> None:
        self.retrying = True
        self.counts.retried(operation)

    async def _start(self, tp: Any) -> None:
        """A partition the group never committed: all of it is unread, start at the earliest."""
        log.info("no committed offset; reading from the earliest", extra={"partition": str(tp)})
        await self._seek_to_beginning(tp)

    async def _out_of_range(self, positions: dict[Any, int]) -> None:
        """The committed offset is gone: loud, counted, then read on from the earliest.

        Note: below the earliest retained offset means retention deleted records no
        writer had stored (a writer outage longer than `FEED_SUBMITTED_RETENTION_MS`):
        they are lost, and this says how many. Above the end means the topic was
        recreated; everything in it is new and unread.
        """
        try:
            starts = await self.source.beginning_offsets(list(positions))
        except KafkaError as exc:  # the next fetch raises this again
            log.warning("cannot read the earliest offsets", extra={"error": repr(exc)})
            return
        for tp, position in positions.items():
            earliest = starts.get(tp, 0)
            self.counts.out_of_range.inc()
            if position < earliest:
                self.counts.expired.inc(earliest - position)
                log.error(
                    "records expired before the writer stored them",
                    extra={
                        "partition": str(tp),
                        "committed": position,
                        "earliest": earliest,
                        "lost": earliest - position,
                    },
                )
            else:
                log.error(
                    "committed offset is past the partition's end (topic recreated?); "
                    "reading from the earliest",
                    extra={"partition": str(tp), "committed": position, "earliest": earliest},
                )
            await self._seek_to_beginning(tp)

    async def _seek_to_beginning(self, tp: Any) -> None:
        try:
            await self.source.seek_to_beginning(tp)
        except KafkaError as exc:  # revoked meanwhile: its next owner decides
            log.warning("seek failed", extra={"partition": str(tp), "error": repr(exc)})
