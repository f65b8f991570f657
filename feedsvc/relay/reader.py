"""The relay's only I/O: reading `messages.committed` into the fanout, and replays from Kafka.

Every api process runs one reader. The topic has one partition, read without a
consumer group (manual assignment), so every replica sees the same records at the
same offsets: the offset is the feed position everywhere.

No consumer here ever resets its position by itself (`auto_offset_reset="none"`): with
aiokafka's default ("latest") a position that retention deleted, or that a recreated topic
no longer has, silently jumps to the end. Instead `getmany` raises `OffsetOutOfRangeError`
(https://aiokafka.readthedocs.io/en/stable/api.html#aiokafka.AIOKafkaConsumer, parameter
`auto_offset_reset`: "none will raise an exception so you can handle this case"), and we
tell the client why, truthfully.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from feedsvc import kafka
from feedsvc.config import Settings
from feedsvc.relay.answers import ReplayFrom, Reset
from feedsvc.relay.changefeed import (
    ChangefeedDecodeError,
    Delete,
    Gap,
    Resolved,
    Row,
    decode_record,
    hlc_value,
)
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.replay import Replay, ReplaysBusy, SeekBack
from feedsvc.relay.subscription import Subscription

log = logging.getLogger(__name__)

MAX_REPLAYS = 16
"""Replays from Kafka at once per process (each holds a consumer); more get a retry hint."""
RECREATED = "the topic was recreated"
REPLAY_FETCH_BYTES = 256 * 1024
"""A replay's fetch size: bounds the memory of `MAX_REPLAYS` replays (aiokafka buffers a
fetch ahead); a replay is read once, so large fetches buy little."""


def _decode(record: Any) -> Row | Delete | Resolved | Gap | None:
    try:
        return decode_record(record.key, record.value)
    except ChangefeedDecodeError as exc:
        # Not ours to repair: skip it, visibly, and keep the feed going.
        log.warning(
            "undecodable changefeed record skipped",
            extra={"offset": record.offset, "reason": str(exc)},
        )
        return None


async def _bounds(consumer: AIOKafkaConsumer, partition: TopicPartition) -> tuple[int, int]:
    low = (await consumer.beginning_offsets([partition]))[partition]
    high = (await consumer.end_offsets([partition]))[partition]
    return low, high


class CommittedReader:
    """Feeds every record of `messages.committed` to a `Fanout`, in offset order."""

    def __init__(
        self,
        settings: Settings,
        max_replays: int = MAX_REPLAYS,
        topic: str = kafka.COMMITTED,
        stored_to_published: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stored_to_published = stored_to_published
        """Called with the seconds from each published row's commit to now, if given."""
        self.partition = TopicPartition(topic, 0)
        """The topic's only partition (tests use their own topic)."""
        self.published = 0
        self.max_replays = max_replays
        self.replays = 0
        """Replays reading Kafka now."""
        self.replays_refused = 0
        self.restarts = 0
        """Times the topic lost our position under the live reader (recreated, or retention)."""
        self._fanout: Fanout | None = None

    @property
    def ready(self) -> bool:
        """Whether the fanout serves subscribers (caught up, exact dedupe decisions)."""
        return self._fanout is not None and self._fanout.ready

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[Fanout] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read until cancelled; hands the fanout to `started` once it exists.

        Note: if the topic loses the reader's position (recreated, or retention deleted
        records not yet read) the fanout restarts from the topic's new bounds and every
        subscriber is told `reset` with the reason; the process keeps serving.
        """
        tp = self.partition
        async with kafka.consumer(
            self.settings, max_partition_fetch_bytes=8 * 1024 * 1024, auto_offset_reset="none"
        ) as consumer:
            consumer.assign([tp])
            low, high = await _bounds(consumer, tp)
            fanout = Fanout(
                self.settings.ring_size, self.settings.subscriber_buffer, low=low, high=high
            )
            consumer.seek(tp, fanout.start_offset)
            log.info("relay reading", extra={"from_offset": fanout.start_offset, "end": high})
            self._fanout = fanout
            task_status.started(fanout)
            try:
                # Subscribers busy writing take their frames between our steps; publishing
                # more than half a buffer in one step could push them over it for nothing.
                step = max(1, self.settings.subscriber_buffer // 2)
                while True:
                    try:
                        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=step)
                    except OffsetOutOfRangeError:
                        low, high = await _bounds(consumer, tp)
                        reason = (
                            RECREATED
                            if fanout.head > high
                            else "the feed's reader fell behind the topic's retention"
                        )
                        log.warning(
                            "relay position lost; restarting the feed",
                            extra={"head": fanout.head, "low": low, "high": high, "reason": reason},
                        )
                        self.restarts += 1
                        fanout.restart(low, high, reason)
                        consumer.seek(tp, fanout.start_offset)
                        continue
                    read_at = time.monotonic()
                    for record in batch.get(tp, ()):
                        event = _decode(record)
                        if isinstance(event, Row | Delete):
                            if fanout.publish(record.offset, event, read_at):
                                self.published += 1
                                self._stored_to_published(event)
                        elif isinstance(event, Resolved):
                            fanout.resolve(record.offset, event.hlc)
                        elif isinstance(event, Gap):
                            log.warning(
                                "changefeed restarted with a gap: every stream is reset",
                                extra={"offset": record.offset, "reason": event.reason},
                            )
                            fanout.gap(record.offset, event.reason)
                        else:
                            fanout.advance(record.offset)
                    await anyio.lowlevel.checkpoint()
            finally:
                fanout.close()

    def _stored_to_published(self, event: Row | Delete) -> None:
        if self.stored_to_published is not None and event.updated is not None:
            # `updated` is the row's commit HLC (wall-clock ns first): the database's
            # clock against ours, so skew between hosts shows here.
            self.stored_to_published(max(0.0, time.time() - hlc_value(event.updated) / 10**19))

    async def replay(
        self, fanout: Fanout, answer: ReplayFrom
    ) -> AsyncIterator[bytes | Reset | Subscription]:
        """Frames after a position older than the ring, read back from Kafka.

        Ends by yielding either a `Reset` (the position cannot be served) or the live
        `Subscription` that continues exactly where the replay stops. Raises `ReplaysBusy`
        before yielding anything when `max_replays` replays are running.
        Note: follows the protocol documented in `feedsvc.relay.replay`.
        """
        if self.replays >= self.max_replays:
            self.replays_refused += 1
            raise ReplaysBusy
        self.replays += 1
        try:
            async with kafka.consumer(
                self.settings,
                auto_offset_reset="none",
                max_partition_fetch_bytes=REPLAY_FETCH_BYTES,
            ) as consumer:
                async for item in self._replay(consumer, fanout, Replay(fanout, answer.after)):
                    yield item
                    if not isinstance(item, bytes):
                        return
        finally:
            self.replays -= 1

    async def _replay(
        self, consumer: AIOKafkaConsumer, fanout: Fanout, replay: Replay
    ) -> AsyncIterator[bytes | Reset | Subscription]:
        tp = self.partition
        consumer.assign([tp])
        low, _ = await _bounds(consumer, tp)
        start = replay.start(low)
        if isinstance(start, Reset):
            yield start
            return
        consumer.seek(tp, start)
        next_offset = start
        while True:
            if (sub := replay.handover(next_offset)) is not None:
                yield sub
                return
            try:
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=2000)
            except OffsetOutOfRangeError:
                low, high = await _bounds(consumer, tp)
                if next_offset > high:
                    yield Reset(f"position {replay.after.at(None)} is gone: {RECREATED}")
                else:
                    # Retention deleted records we had not read yet: they are lost to us.
                    yield Reset(
                        f"position {replay.after.at(None)} is older than the feed's retention "
                        f"(its oldest record is now at offset {low})"
                    )
                return
            records = batch.get(tp, [])
            if not records:
                end = (await consumer.end_offsets([tp]))[tp]
                if next_offset >= end:
                    with anyio.move_on_after(5):
                        await fanout.wait_past(end - 1)
                    next_offset = max(next_offset, end)
                continue
            for record in records:
                if (sub := replay.handover(record.offset)) is not None:
                    yield sub
                    return
                out = replay.feed(record.offset, _decode(record))
                if isinstance(out, SeekBack):
                    consumer.seek(tp, out.offset)
                    next_offset = out.offset
                    break
                if out is not None:
                    yield out
                    if isinstance(out, Reset):
                        return
                next_offset = record.offset + 1
