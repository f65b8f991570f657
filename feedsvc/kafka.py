"""Kafka adapter: topic names, clients that survive a broker that is not up yet, and lag."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaError,
    NotCoordinatorError,
    TopicAlreadyExistsError,
)

from feedsvc.config import Settings

SUBMITTED = "messages.submitted"
COMMITTED = "messages.committed"
DLQ = "messages.dlq"
WRITER_GROUP = "feedsvc-writer"

log = logging.getLogger(__name__)
T = TypeVar("T")


def topic_partitions(settings: Settings) -> dict[str, int]:
    """Every topic feedsvc uses with its partition count (DESIGN §3)."""
    # messages.committed has one partition: its offset is the feed position.
    return {SUBMITTED: settings.submitted_partitions, COMMITTED: 1, DLQ: 1}


async def start_with_retry(
    start: Callable[[], Awaitable[None]], what: str, attempts: int = 60
) -> None:
    """Call a client's `start()` until the broker answers.

    Note: aiokafka's start() fails at once when no broker is reachable (DESIGN §5),
    while in compose and after a restart the broker may come up after us.
    """
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            await start()
            return
        except KafkaConnectionError as exc:
            if attempt == attempts:
                raise
            log.warning("kafka not reachable yet", extra={"client": what, "error": str(exc)})
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)


@asynccontextmanager
async def producer(settings: Settings, **options: Any) -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent producer with `acks=all`: a send succeeds only once every replica has it."""
    client = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        # Bounded waits everywhere: a send that cannot be delivered fails instead of hanging.
        request_timeout_ms=int(settings.kafka_timeout_s * 1000),
        **options,
    )
    await start_with_retry(client.start, "producer")
    try:
        yield client
    finally:
        await client.stop()


@asynccontextmanager
async def admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client for topics and group offsets."""
    client = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        request_timeout_ms=int(settings.kafka_timeout_s * 1000),
    )
    await start_with_retry(client.start, "admin")
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def consumer(
    settings: Settings, *topics: str, **options: Any
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer that commits nothing by itself; the caller decides when an offset is done."""
    client = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=max(int(settings.kafka_timeout_s * 1000), 30_000),
        **options,
    )
    await start_with_retry(client.start, "consumer")
    try:
        yield client
    finally:
        await client.stop()


async def ensure_topics(client: AIOKafkaAdminClient, settings: Settings) -> list[str]:
    """Create the topics that are missing; returns the names it created."""
    existing = set(await client.list_topics())
    wanted = [
        NewTopic(name, num_partitions=count, replication_factor=1)
        for name, count in topic_partitions(settings).items()
        if name not in existing
    ]
    if not wanted:
        return []
    # Another setup may race us to it; the topic is there, which is all we need.
    with contextlib.suppress(TopicAlreadyExistsError):
        await client.create_topics(wanted)
    return [t.name for t in wanted]


class LagUnknown(Exception):
    """Kafka answered, but cannot tell the writer's progress yet (e.g. a new coordinator).

    Note: not a sign that Kafka is down; the caller keeps the last backlog it saw.
    """


class WriterProgress:
    """Reads how far the writer group is behind on `messages.submitted`."""

    def __init__(self, admin_client: AIOKafkaAdminClient, offsets: AIOKafkaConsumer) -> None:
        self.admin = admin_client
        self.offsets = offsets
        self.partitions: list[TopicPartition] = []

    async def __call__(self) -> tuple[int, int]:
        """(records produced, records the writer group committed), summed over partitions.

        Note: a partition the group never committed counts from its earliest offset;
        the difference of the two is the writer's backlog.
        """
        if not self.partitions:
            described = await self.admin.describe_topics([SUBMITTED])
            found = [p["partition"] for t in described for p in t.get("partitions", ())]
            if not found:
                raise KafkaError(f"topic {SUBMITTED} has no partitions; has setup run?")
            self.partitions = [TopicPartition(SUBMITTED, p) for p in sorted(found)]
        ends = await self.offsets.end_offsets(self.partitions)
        starts = await self.offsets.beginning_offsets(self.partitions)
        try:
            committed = await self.admin.list_consumer_group_offsets(
                WRITER_GROUP, partitions=self.partitions
            )
        except (
            GroupCoordinatorNotAvailableError,
            CoordinatorLoadInProgressError,
            NotCoordinatorError,
        ) as exc:
            # The broker's retriable answers while a coordinator is created, loads or
            # moves (https://kafka.apache.org/protocol#protocol_error_codes; e.g.
            # https://kafka.apache.org/39/javadoc/org/apache/kafka/common/errors/CoordinatorLoadInProgressException.html);
            # a fresh broker creates its offsets topic on first use. This passes.
            raise LagUnknown(str(exc)) from exc
        produced = done = 0
        for tp in self.partitions:
            mark = committed.get(tp)
            produced += ends[tp]
            done += mark.offset if mark is not None and mark.offset >= 0 else starts[tp]
        return produced, done
