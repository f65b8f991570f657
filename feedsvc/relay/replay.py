"""Serving a resume position older than the ring from Kafka, then handing over to the ring.

The protocol the I/O layer follows for `Fanout.subscribe(...) -> ReplayFrom(after)`:

    replay = Replay(fanout, answer.after)
    seek = replay.start(low)                 # Reset when retention has deleted the gap
    read `messages.committed` from `seek`; for each record at `offset`:
        if (sub := replay.handover(offset)) is not None: stop reading; stream `sub`
        out = replay.feed(offset, decoded record, or None when undecodable)
        Reset -> send `reset` then history; bytes -> send them;
        SeekBack(o) -> read again from `o` (its warm-up held no resolved record)
    at the partition's end (position `p`, nothing left to read): `replay.handover(p)`,
    after `await fanout.wait_past(p - 1)` if it is None.

Gap-free and duplicate-free by construction: the replay sends only offsets below the
ring's floor, the ring serves everything from the floor on, and both drop the same
repeats because the replay's deduper is exact (`Deduper.exact_at`) before it sends
anything, and both filter by the position's history snapshot the same way (`filtered`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from feedsvc.relay.answers import Reset
from feedsvc.relay.changefeed import Delete, Gap, Resolved, Row
from feedsvc.relay.dedupe import Deduper
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.frames import EventId, event_frame, snapshot_frame, tag_of
from feedsvc.relay.subscription import Subscription


class ReplaysBusy(Exception):
    """Every replay slot of this process is taken: the client should retry later."""


@dataclass(frozen=True, slots=True)
class SeekBack:
    """Read again from `offset`: the warm-up before the position had no resolved record."""

    offset: int


class Replay:
    """Frames after a position the ring no longer holds, rebuilt from the Kafka records."""

    def __init__(self, fanout: Fanout, after: EventId) -> None:
        self._fanout = fanout
        self.after = after
        self._window = fanout.dedupe_window
        self._low = 0
        self._dedupe = Deduper(self._window)
        self._last = after
        self._snapshot = after.snapshot
        self._generation = fanout.generation

    def start(self, low: int) -> int | Reset:
        """The offset to read from, given the partition's earliest offset `low`."""
        if low > self.after.offset + 1:
            return Reset(
                f"position {self.after.at(None)} is older than the feed's retention "
                f"(its oldest record is at offset {low})"
            )
        self._low = low
        return self._seek(max(low, self.after.offset + 1 - self._window))

    def _seek(self, offset: int) -> int:
        # Read the window before the position too, to drop what live readers drop.
        self._dedupe = Deduper(self._window, 0 if offset == self._low else offset)
        return offset

    def feed(
        self, offset: int, record: Row | Delete | Resolved | Gap | None
    ) -> bytes | Reset | SeekBack | None:
        """What to send for the record at `offset`, if anything (see the module's protocol)."""
        if isinstance(record, Resolved):
            self._dedupe.see_resolved(offset, record.hlc)
            return None
        if isinstance(record, Gap):
            # The changefeed restarted with a gap here: a position before it cannot go on.
            return Reset(record.reason) if offset > self.after.offset else None
        resolved = self._dedupe.resolved
        duplicate = record is not None and self._dedupe.is_duplicate(offset, record)
        if offset < self.after.offset:
            return None
        if offset == self.after.offset:
            if self.after.tag is not None:
                found = None
                if isinstance(record, Row):
                    found = tag_of(record.message.id)
                elif isinstance(record, Delete):
                    found = tag_of(record.id)
                if found != self.after.tag:
                    return Reset(
                        f"no event {self.after.at(None)} in this feed: the topic was recreated"
                    )
            return None
        if record is None or duplicate:
            return None
        if not self._dedupe.exact_at(offset):
            start = self._dedupe.start
            return SeekBack(self._seek(max(self._low, start - self._window)))
        if self._snapshot is not None and resolved is not None and resolved >= self._snapshot:
            self._snapshot = None
        if self._snapshot is None:
            eid, frame = event_frame(offset, record)
        else:
            eid, frame = snapshot_frame(offset, record, self._snapshot)
        self._last = EventId(offset, tag_of(_message_id(record)), self._snapshot)
        assert str(self._last) == eid
        return frame

    def handover(self, next_offset: int) -> Subscription | Reset | None:
        """Once the ring covers `next_offset` on, the live subscription that continues the
        replay (None: keep reading, or wait for the fanout to catch up; Reset: the fanout
        restarted meanwhile, see `Fanout.restart`).

        Note: `next_offset` is the offset of the next record the reader would feed.
        """
        fan = self._fanout
        if fan.generation != self._generation:
            return Reset(f"position {self.after.at(None)} is gone: {fan.restart_reason}")
        if next_offset <= self.after.offset or next_offset < fan.floor:
            return None
        if next_offset > fan.head:
            # Only a gap in offsets gets here (records below the floor were fed, the floor
            # is at most the head): nothing lies between the head and next_offset.
            if fan.head < fan.floor:
                return None
            next_offset = fan.head
        return fan.subscribe_after(next_offset - 1, self._last)


def _message_id(record: Row | Delete) -> uuid.UUID:
    return record.message.id if isinstance(record, Row) else record.id
