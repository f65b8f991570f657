"""The relay's reader against a real broker: lost positions are told, never skipped."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.records_to_delete import RecordsToDelete
from aiokafka.errors import KafkaError

from devstack import KafkaBroker
from devstack.poll import wait_for
from feedsvc.config import load_settings
from feedsvc.messages import FEED_RESTART_KEY, FeedRestart, encode_feed_restart
from feedsvc.relay.answers import ReplayFrom, Reset
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.reader import RECREATED, CommittedReader
from feedsvc.relay.subscription import Subscription
from tests.support import native_only
from tests.unit.relay.helpers import parse

pytestmark = [pytest.mark.stack, native_only]

BASE = 1_700_000_000_000_000_000


def _row(n: int) -> tuple[bytes, bytes]:
    message_id = uuid.uuid5(uuid.NAMESPACE_OID, f"reader {n}")
    after = {
        "author": "ann",
        "created_at": "2024-01-01T00:00:00Z",
        "id": str(message_id),
        "text": f"message {n}",
    }
    value = {"after": after, "updated": f"{BASE + n}.0000000000"}
    return json.dumps([str(message_id)]).encode(), json.dumps(value).encode()


def _resolved(n: int) -> bytes:
    return json.dumps({"resolved": f"{BASE + n}.0000000000"}).encode()


async def _produce(bootstrap: str, topic: str, first: int, count: int) -> None:
    """Rows `first .. first + count - 1`, with a resolved after every 100 and at the end."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        sends = []
        for n in range(first, first + count):
            key, value = _row(n)
            sends.append(await producer.send(topic, value=value, key=key))
            if n % 100 == 99 or n == first + count - 1:
                sends.append(await producer.send(topic, value=_resolved(n), key=None))
        for send in sends:
            await send
    finally:
        await producer.stop()


@asynccontextmanager
async def _admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _create(bootstrap: str, topic: str) -> None:
    async with _admin(bootstrap) as admin:

        async def created() -> bool:
            try:
                await admin.create_topics([NewTopic(topic, 1, 1)])
            except KafkaError:  # the deletion of its previous incarnation is still going on
                return False
            return True

        await wait_for(created, bool, 30, f"topic {topic} created", interval=0.5)


async def _until(check: Callable[[], bool], within: float, what: str) -> None:
    """`wait_for` of a plain condition on objects this event loop updates."""

    async def probe() -> bool:
        return check()

    await wait_for(probe, bool, within, what, interval=0.05)


def _reader(kafka: KafkaBroker, topic: str) -> CommittedReader:
    settings = load_settings(
        {
            "FEED_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "FEED_RING_SIZE": "50",
            "FEED_SUBSCRIBER_BUFFER": "50",
        }
    )
    return CommittedReader(settings, topic=topic)


def _offsets(frames: list[bytes]) -> list[int]:
    return [int(eid.split("-")[0]) for eid, event, _ in parse(frames) if event == "message"]


async def test_records_deleted_under_a_replay_are_a_reset_not_a_skip(kafka: KafkaBroker) -> None:
    """Retention deleting what a running replay has not read yet ends it with `reset`
    ("older than the feed's retention"), after a gap-free prefix."""
    topic = f"reader.{uuid.uuid4().hex[:8]}"
    await _create(kafka.bootstrap, topic)
    await _produce(kafka.bootstrap, topic, 0, 6000)
    reader = _reader(kafka, topic)
    async with anyio.create_task_group() as tg:
        fanout: Fanout = await tg.start(reader.run)
        await _until(lambda: fanout.ready, 60, "the relay to catch up")
        answer = fanout.subscribe("10")
        assert isinstance(answer, ReplayFrom)
        replay = reader.replay(fanout, answer)
        frames: list[bytes] = []
        for _ in range(20):
            item = await anext(replay)
            assert isinstance(item, bytes)
            frames.append(item)
        async with _admin(kafka.bootstrap) as admin:
            await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(5000)})
        end: Reset | Subscription | None = None
        async for item in replay:
            if isinstance(item, bytes):
                frames.append(item)
            else:
                end = item
        tg.cancel_scope.cancel()
    assert isinstance(end, Reset), end
    assert "older than the feed's retention" in end.reason
    offsets = _offsets(frames)
    # Offsets hold rows and a resolved after every 100 rows: every row from 11 on, no gap.
    expected = [o for o in range(11, offsets[-1] + 1) if o % 101 != 100]
    assert offsets == expected


async def test_recreated_topic_resets_subscribers_and_the_reader_goes_on(
    kafka: KafkaBroker,
) -> None:
    """The live reader survives its topic being recreated: every subscriber gets `reset`
    ("the topic was recreated") and the new topic is served."""
    topic = f"reader.{uuid.uuid4().hex[:8]}"
    await _create(kafka.bootstrap, topic)
    await _produce(kafka.bootstrap, topic, 0, 300)
    reader = _reader(kafka, topic)
    async with anyio.create_task_group() as tg:
        fanout: Fanout = await tg.start(reader.run)
        await _until(lambda: fanout.ready, 60, "the relay to catch up")
        subs = [fanout.subscribe(None) for _ in range(3)]
        assert all(isinstance(sub, Subscription) for sub in subs)
        async with _admin(kafka.bootstrap) as admin:
            await admin.delete_topics([topic])
        await _create(kafka.bootstrap, topic)
        await _produce(kafka.bootstrap, topic, 1000, 20)
        await _until(lambda: reader.restarts == 1, 60, "the reader to notice")
        for sub in subs:
            assert isinstance(sub, Subscription)
            assert sub.take() == [] and sub.ended
            assert sub.reset_reason == RECREATED
        await _until(lambda: fanout.ready and fanout.head >= 21, 60, "the new topic read")
        fresh = fanout.subscribe("-1")
        assert isinstance(fresh, Subscription)
        assert len(_offsets(fresh.take())) == 20
        tg.cancel_scope.cancel()


async def test_gap_marker_resets_streams_and_older_positions(kafka: KafkaBroker) -> None:
    """Setup's gap marker read from a real broker: open streams end with its reason, a
    position before it is `reset` (from the ring and from a Kafka replay), later ones work."""
    topic = f"reader.{uuid.uuid4().hex[:8]}"
    await _create(kafka.bootstrap, topic)
    await _produce(kafka.bootstrap, topic, 0, 300)
    reader = _reader(kafka, topic)
    async with anyio.create_task_group() as tg:
        fanout: Fanout = await tg.start(reader.run)
        await _until(lambda: fanout.ready, 60, "the relay to catch up")
        sub = fanout.subscribe(None)
        assert isinstance(sub, Subscription)
        marker = FeedRestart(reason="drill", previous_job=1, previous_high_water=None, at="1.0")
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                topic, encode_feed_restart(marker), key=FEED_RESTART_KEY
            )
        finally:
            await producer.stop()
        await _produce(kafka.bootstrap, topic, 1000, 10)
        await _until(lambda: fanout.head > sent.offset + 10, 60, "the marker and rows read")
        reason = "the changefeed restarted with a gap: drill"
        assert sub.take() == [] and sub.ended and sub.reset_reason == reason
        assert fanout.subscribe(str(sent.offset - 1)) == Reset(reason)
        assert fanout.subscribe("10") == Reset(reason)  # older than the ring: still reset
        after = fanout.subscribe(str(sent.offset))
        assert isinstance(after, Subscription)
        assert len(_offsets(after.take())) == 10
        tg.cancel_scope.cancel()
