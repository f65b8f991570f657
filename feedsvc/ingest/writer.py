"""The writer: `messages.submitted` → one multi-row INSERT per batch → commit offsets."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError

from feedsvc.kafka import DLQ
from feedsvc.messages import DeadLetter, Message, decode_message, encode
from feedsvc.store import MessageStore, is_transient

log = logging.getLogger(__name__)


def decode_batch(records: Sequence[Any]) -> tuple[list[Message], list[DeadLetter]]:
    """Split fetched records into messages (first of each id) and dead letters."""
    messages: dict[Any, Message] = {}
    dead: list[DeadLetter] = []
    for record in records:
        try:
            message = decode_message(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
            dead.append(
                DeadLetter(
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=None if record.key is None else record.key.decode(errors="replace"),
                    value=(record.value or b"").decode(errors="replace"),
                    reason=str(exc),
                )
            )
            continue
        # A client retry with the same Idempotency-Key can put one id twice in a batch.
        messages.setdefault(message.id, message)
    return list(messages.values()), dead


class BatchAbandoned(Exception):
    """The writer was told to stop while the database was down; the batch stays uncommitted."""


class Writer:
    """Stores every record of its partitions exactly once, committing offsets last.

    Note: at-least-once consumption plus `ON CONFLICT (id) DO NOTHING` makes a
    redelivered batch (after a crash or a rebalance) a no-op, not a duplicate.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        store: MessageStore,
        dlq: AIOKafkaProducer,
        batch: int,
        linger_ms: int,
    ) -> None:
        self.consumer = consumer
        self.store = store
        self.dlq = dlq
        self.batch = batch
        self.linger_ms = linger_ms
        self.stored = 0
        self.dead = 0

    async def run(self, stopping: anyio.Event) -> None:
        """Consume until `stopping` is set; the batch in hand is finished first."""
        last_report, reported = time.monotonic(), 0
        while not stopping.is_set():
            fetched = await self.consumer.getmany(timeout_ms=self.linger_ms, max_records=self.batch)
            records = [r for partition in fetched.values() for r in partition]
            if records:
                try:
                    await self.handle(records, stopping)
                except BatchAbandoned as exc:
                    log.warning(
                        "stopping with a batch unstored; it will be read again",
                        extra={"rows": exc.args[0]},
                    )
                    return
            if time.monotonic() - last_report >= 5 and self.stored != reported:
                log.info(
                    "writer progress",
                    extra={
                        "stored_total": self.stored,
                        "dead_total": self.dead,
                        "stored_per_s": round(
                            (self.stored - reported) / (time.monotonic() - last_report)
                        ),
                    },
                )
                last_report, reported = time.monotonic(), self.stored

    async def handle(self, records: Sequence[Any], stopping: anyio.Event) -> None:
        """decode → dead-letter → insert → commit, in that order."""
        messages, dead = decode_batch(records)
        for letter in dead:
            log.warning("dead letter", extra={"offset": letter.offset, "reason": letter.reason})
            await self.dlq.send_and_wait(DLQ, encode(letter))
        await self._insert(messages, stopping)
        try:
            await self.consumer.commit()
        except (CommitFailedError, KafkaError) as exc:
            # The partitions moved to another writer, which re-reads from the last
            # commit; what we stored is stored, the repeat insert is a no-op.
            log.warning(
                "offset commit failed; the batch will be re-read", extra={"error": repr(exc)}
            )
        self.stored += len(messages)
        self.dead += len(dead)

    async def _insert(self, messages: Sequence[Message], stopping: anyio.Event) -> None:
        delay = 0.05
        while True:
            try:
                await self.store.insert(messages)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if stopping.is_set() and delay >= 1:
                    # Shutting down during an outage: leave the batch uncommitted;
                    # whoever owns the partitions next stores it.
                    raise BatchAbandoned(len(messages)) from exc
                log.warning(
                    "insert failed, retrying",
                    extra={"error": repr(exc), "rows": len(messages), "retry_in_s": delay},
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
