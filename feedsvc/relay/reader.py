"""The relay's only I/O: reading `messages.committed` into the fanout, and replays from Kafka.

Every api process runs one reader. The topic has one partition, read without a
consumer group (manual assignment), so every replica sees the same records at the
same offsets: the offset is the feed position everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
from aiokafka import TopicPartition

from feedsvc import kafka
from feedsvc.config import Settings
from feedsvc.relay.changefeed import ChangefeedDecodeError, Delete, Resolved, Row, decode_record
from feedsvc.relay.fanout import Fanout, ReplayFrom, Reset, Subscription
from feedsvc.relay.replay import Replay

log = logging.getLogger(__name__)

PARTITION = TopicPartition(kafka.COMMITTED, 0)


def _decode(record: Any) -> Row | Delete | Resolved | None:
    try:
        return decode_record(record.key, record.value)
    except ChangefeedDecodeError as exc:
        # Not ours to repair: skip it, visibly, and keep the feed going.
        log.warning(
            "undecodable changefeed record skipped",
            extra={"offset": record.offset, "reason": str(exc)},
        )
        return None


class CommittedReader:
    """Feeds every record of `messages.committed` to a `Fanout`, in offset order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fanout: Fanout | None = None
        self.published = 0

    @property
    def ready(self) -> bool:
        """Whether the fanout has caught up with the topic's end as it was at start."""
        return self.fanout is not None and self.fanout.head >= self.fanout.ready_at

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read until cancelled; `started` once the fanout exists."""
        async with kafka.consumer(
            self.settings, max_partition_fetch_bytes=8 * 1024 * 1024
        ) as consumer:
            consumer.assign([PARTITION])
            low = (await consumer.beginning_offsets([PARTITION]))[PARTITION]
            high = (await consumer.end_offsets([PARTITION]))[PARTITION]
            fanout = Fanout(
                self.settings.ring_size, self.settings.subscriber_buffer, low=low, high=high
            )
            consumer.seek(PARTITION, fanout.start_offset)
            self.fanout = fanout
            log.info("relay reading", extra={"from_offset": fanout.start_offset, "end": high})
            task_status.started()
            try:
                # Subscribers busy writing take their frames between our steps; publishing
                # more than half a buffer in one step could push them over it for nothing.
                step = max(1, self.settings.subscriber_buffer // 2)
                while True:
                    batch = await consumer.getmany(PARTITION, timeout_ms=1000, max_records=step)
                    for record in batch.get(PARTITION, ()):
                        event = _decode(record)
                        if isinstance(event, Row | Delete):
                            self.published += fanout.publish(record.offset, event)
                        else:
                            fanout.advance(record.offset)
                    await anyio.lowlevel.checkpoint()
            finally:
                fanout.close()

    async def replay(self, answer: ReplayFrom) -> AsyncIterator[bytes | Reset | Subscription]:
        """Frames after a position older than the ring, read back from Kafka.

        Ends by yielding either a `Reset` (the position cannot be served) or the live
        `Subscription` that continues exactly where the replay stops.
        Note: follows the protocol documented in `feedsvc.relay.replay`.
        """
        assert self.fanout is not None
        fanout = self.fanout
        replay = Replay(fanout, answer.after)
        async with kafka.consumer(self.settings) as consumer:
            consumer.assign([PARTITION])
            low = (await consumer.beginning_offsets([PARTITION]))[PARTITION]
            start = replay.start(low)
            if isinstance(start, Reset):
                yield start
                return
            consumer.seek(PARTITION, start)
            next_offset = start
            while True:
                if (sub := replay.handover(next_offset)) is not None:
                    yield sub
                    return
                batch = await consumer.getmany(PARTITION, timeout_ms=200, max_records=2000)
                records = batch.get(PARTITION, [])
                if not records:
                    end = (await consumer.end_offsets([PARTITION]))[PARTITION]
                    if next_offset >= end:
                        with anyio.move_on_after(5):
                            await fanout.wait_past(end - 1)
                        next_offset = max(next_offset, end)
                    continue
                for record in records:
                    if (sub := replay.handover(record.offset)) is not None:
                        yield sub
                        return
                    event = _decode(record)
                    out = replay.feed(
                        record.offset, event if isinstance(event, Row | Delete) else None
                    )
                    if out is not None:
                        yield out
                        if isinstance(out, Reset):
                            return
                    next_offset = record.offset + 1
