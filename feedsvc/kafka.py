"""Kafka adapter: topic names, clients that survive a broker that is not up yet, and lag."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    InvalidProducerIdMapping,
    KafkaConnectionError,
    KafkaError,
    NotCoordinatorError,
    OutOfOrderSequenceNumber,
    TopicAlreadyExistsError,
    UnknownProducerId,
)

from feedsvc.config import Settings

SUBMITTED = "messages.submitted"
COMMITTED = "messages.committed"
DLQ = "messages.dlq"
REQUEST_ID_HEADER = "request-id"
"""The header of a `messages.submitted` record that carries its post's `X-Request-ID`."""
WRITER_GROUP = "feedsvc-writer"

log = logging.getLogger(__name__)
T = TypeVar("T")


def topic_partitions(settings: Settings) -> dict[str, int]:
    """Every topic feedsvc uses with its partition count (ARCHITECTURE.md#topics)."""
    # messages.committed has one partition: its offset is the feed position.
    return {SUBMITTED: settings.submitted_partitions, COMMITTED: 1, DLQ: 1}


async def start_with_retry(
    start: Callable[[], Awaitable[None]], what: str, attempts: int = 60
) -> None:
    """Call a client's `start()` until the broker answers.

    Note: aiokafka's start() fails at once when no broker is reachable
    (ARCHITECTURE.md#aiokafka-start), while in compose and after a restart the broker
    may come up after us.
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


# Errors after which aiokafka's idempotent producer never sends again: it keeps the
# refused sequence numbers (and producer id) for good, so every later send fails the same
# way until the process restarts: https://github.com/aio-libs/aiokafka/issues/1017
SESSION_LOST = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerIdMapping)


class RenewingProducer:
    """An idempotent producer that starts a new idempotent session when the broker refuses
    the old one's sequence numbers (after an outage cut sends off mid-flight).

    Note: the send that hit the refusal still fails (the caller answers or retries as for
    any Kafka error); sends after the new session has started go through it. A record the
    old session did get through may be written again by a retry: every consumer of our
    topics is idempotent by message id (the writer's insert-if-absent stores it once).
    """

    def __init__(self, factory: Callable[[], AIOKafkaProducer]) -> None:
        self._factory = factory
        self._client: AIOKafkaProducer | None = None
        self._renewal: asyncio.Task[None] | None = None
        self.renewals = 0
        """New sessions started since start."""

    async def start(self) -> None:
        """Start the first session, waiting for the broker (`start_with_retry`)."""
        client = self._factory()
        await start_with_retry(client.start, "producer")
        self._client = client

    async def stop(self) -> None:
        """Stop the session (and a renewal under way)."""
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        if self._client is not None:
            await self._client.stop()

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None = None, **options: Any
    ) -> Any:
        """Send one record; returns its metadata once Kafka acknowledged it."""
        client = self._client
        if client is None:
            raise RuntimeError("the producer is not started")
        try:
            return await client.send_and_wait(topic, value, key=key, **options)
        except SESSION_LOST:
            if self._renewal is None and self._client is client:
                self._renewal = asyncio.get_running_loop().create_task(self._renew(client))
            raise

    async def _renew(self, lost: AIOKafkaProducer) -> None:
        try:
            fresh = self._factory()
            await start_with_retry(fresh.start, "producer")
            self._client = fresh
            self.renewals += 1
            log.warning("kafka producer renewed: its idempotent session was refused")
            await lost.stop()
        finally:
            self._renewal = None


@asynccontextmanager
async def producer(settings: Settings, **options: Any) -> AsyncIterator[RenewingProducer]:
    """An idempotent producer with `acks=all`: a send succeeds only once every replica has it."""

    def factory() -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            # Bounded waits everywhere: a send that cannot be delivered fails, not hangs.
            request_timeout_ms=int(settings.kafka_timeout_s * 1000),
            **options,
        )

    client = RenewingProducer(factory)
    await client.start()
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


def writer_consumer(settings: Settings) -> AbstractAsyncContextManager[AIOKafkaConsumer]:
    """The writer group's consumer of `messages.submitted`.

    Note: `auto_offset_reset="none"`, because both automatic resets are silent: a
    position that retention deleted under a lagging writer would jump to the
    earliest (or latest) record without a word. The writer handles a new group's
    first read and an out-of-range position itself, and reports the latter
    (ingest/writer.py). https://kafka.apache.org/41/configuration/consumer-configs
    """
    return consumer(
        settings,
        SUBMITTED,
        group_id=WRITER_GROUP,
        auto_offset_reset="none",
        # Above the broker's largest record (message.max.bytes, 1 MiB by default), so
        # even a record that is no message can be fetched and dead-lettered.
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """The topic-level configs setup gives each topic it creates.

    Note: `min.insync.replicas` is how many replicas must have a record before an
    `acks=all` send succeeds; `retention.ms` and `retention.bytes` how long and how
    much the broker keeps (https://kafka.apache.org/41/configuration/topic-configs).
    `messages.submitted` gets its retention explicitly: it bounds how long a writer
    outage may last before accepted posts are deleted unstored.
    """
    durable = {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
    kept = {
        "retention.ms": str(settings.submitted_retention_ms),
        # No size limit either, whatever the broker's default: the api's backlog check
        # (FEED_MAX_BACKLOG) is what bounds how much waits here.
        "retention.bytes": "-1",
    }
    return {
        SUBMITTED: {**durable, **kept},
        COMMITTED: durable,
        DLQ: durable,
    }


async def ensure_topics(client: AIOKafkaAdminClient, settings: Settings) -> list[str]:
    """Create the topics that are missing, with their configs; returns the names it created.

    Note: an existing topic is left as it is (its replication factor cannot change in
    place); a config of it that differs from the settings is logged as a warning.
    """
    existing = set(await client.list_topics())
    configs = topic_configs(settings)
    wanted = [
        NewTopic(
            name,
            num_partitions=count,
            replication_factor=settings.topic_replication_factor,
            topic_configs=configs[name],
        )
        for name, count in topic_partitions(settings).items()
        if name not in existing
    ]
    if wanted:
        response = await client.create_topics(wanted)
        for name, code, detail in response.topic_errors:
            # Another setup may race us to it; the topic is there, which is all we need.
            if code not in (0, TopicAlreadyExistsError.errno):
                raise KafkaError(f"cannot create topic {name}: {detail} (error {code})")
    await _warn_on_drift(client, settings, [n for n in configs if n in existing])
    return [t.name for t in wanted]


async def describe_topic_configs(
    client: AIOKafkaAdminClient, names: list[str]
) -> dict[str, dict[str, str]]:
    """The current value of every config of each named topic."""
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    found: dict[str, dict[str, str]] = {}
    for response in await client.describe_configs(resources):
        for code, detail, _type, name, entries, *_ in response.resources:
            if code:
                raise KafkaError(f"cannot describe topic {name}: {detail} (error {code})")
            found[name] = {entry[0]: entry[1] for entry in entries}
    return found


async def replication_factors(client: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Each named topic's replication factor (the fewest replicas of any of its partitions)."""
    described = await client.describe_topics(names)
    return {
        t["topic"]: min((len(p["replicas"]) for p in t["partitions"]), default=0) for t in described
    }


async def _warn_on_drift(client: AIOKafkaAdminClient, settings: Settings, names: list[str]) -> None:
    if not names:
        return
    wanted = topic_configs(settings)
    try:
        current = await describe_topic_configs(client, names)
        factors = await replication_factors(client, names)
    except KafkaError as exc:  # only a check: the topics are there
        log.warning("cannot compare the topics with the settings", extra={"error": repr(exc)})
        return
    for name in names:
        drift = {
            key: {"topic": current[name].get(key), "settings": value}
            for key, value in wanted[name].items()
            if current[name].get(key) != value
        }
        if factors.get(name) != settings.topic_replication_factor:
            drift["replication factor"] = {
                "topic": str(factors.get(name)),
                "settings": str(settings.topic_replication_factor),
            }
        if drift:
            log.warning(
                "an existing topic differs from the settings; change it with kafka-configs.sh "
                "or kafka-reassign-partitions.sh",
                extra={"topic": name, "differences": drift},
            )


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
