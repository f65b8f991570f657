"""`messages.dlq`: where the records the writer cannot store go, bounded, counted and logged."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any, Protocol

import anyio
from aiokafka.errors import KafkaError

from feedsvc.ingest.retry import until_done
from feedsvc.kafka import DLQ
from feedsvc.messages import DeadLetter, encode
from feedsvc.metrics import Metrics

log = logging.getLogger(__name__)

DEAD_LETTERS_TOTAL = "feedsvc_writer_dead_letters_total"
"""The name of its samples in `/metrics` (label `stage`)."""


class Producer(Protocol):
    """What sending a dead letter needs of a Kafka producer (`AIOKafkaProducer` is one)."""

    async def send_and_wait(self, topic: str, value: bytes) -> Any:
        """Send one record; returns once the broker acknowledged it."""
        ...


class DeadLetters:
    """Sends dead letters to `messages.dlq`, waiting out Kafka outages; counts and logs each.

    Note: at least once. A letter whose send timed out may still arrive, and a batch
    re-read after a crash sends its letters again; (topic, partition, offset) names
    the record, so a reader of the DLQ can drop repeats.
    """

    def __init__(self, producer: Producer, timeout_s: float, metrics: Metrics) -> None:
        self.producer = producer
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.counts = metrics.writer

    async def send(self, letters: Sequence[DeadLetter], stopping: anyio.Event) -> None:
        """Send every letter in order; returns once Kafka acknowledged them all.

        Note: a broker that is down is waited for (never a skip); `BatchAbandoned`
        when told to stop meanwhile, so the batch stays uncommitted.
        """
        for letter in letters:
            send = partial(self.producer.send_and_wait, DLQ, encode(letter))
            await until_done(
                send,
                _retriable,
                stopping,
                "dead letter send",
                self.timeout_s,
                on_retry=self.counts.retried,
            )
            self.counts.dead_letters.labels(letter.stage).inc()
            log.warning(
                "dead letter",
                extra={
                    "topic": letter.topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "stage": letter.stage,
                    "reason": letter.reason,
                    "value_size": letter.value_size,
                    "value_sha256": letter.value_sha256,
                },
            )


def _retriable(exc: Exception) -> bool:
    # Any Kafka error, even one Kafka calls final (a record too large): the letter is
    # bounded, so such an error is the broker's configuration, and skipping would lose it.
    return isinstance(exc, KafkaError | TimeoutError | OSError)
