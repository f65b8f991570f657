"""Setup's gap marker, written to a real broker where the relay finds it.

When setup has to start a fresh changefeed on a table that already had rows, it first
writes a restart marker into `messages.committed` (feedsvc.roles._write_restart_marker,
called from schema.ensure_changefeed). The relay reads it as a `Gap` and turns its offset
into `reset` for every open stream and every older position (tests/unit/relay).
"""

from __future__ import annotations

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devstack import KafkaBroker
from feedsvc import kafka as feed_kafka
from feedsvc import roles
from feedsvc.config import load_settings
from feedsvc.messages import FEED_RESTART_KEY, FeedRestart
from feedsvc.relay.changefeed import Gap, decode_record
from tests.support import native_only

pytestmark = [pytest.mark.stack, native_only]


async def test_marker_lands_in_the_committed_partition(kafka: KafkaBroker) -> None:
    """The marker is one acknowledged record in partition 0 with the marker key."""
    settings = load_settings({"FEED_KAFKA_BOOTSTRAP": kafka.bootstrap})
    async with feed_kafka.admin(settings) as admin:
        await feed_kafka.ensure_topics(admin, settings)
    marker = FeedRestart(
        reason="integration test", previous_job=7, previous_high_water=None, at="5.0000000000"
    )
    await roles._write_restart_marker(settings, marker)

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(feed_kafka.COMMITTED, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        batch = await consumer.getmany(partition, timeout_ms=10_000)
    finally:
        await consumer.stop()
    records = batch.get(partition, [])
    assert [r.key for r in records] == [FEED_RESTART_KEY]
    value = msgspec.json.decode(records[0].value)
    assert value == {"feed_restart": msgspec.to_builtins(marker)}
    assert decode_record(records[0].key, records[0].value) == Gap(
        "the changefeed restarted with a gap: integration test"
    )
