"""Serving a resume position older than the ring from Kafka, then handing over to the ring.

The protocol the I/O layer follows for `Fanout.subscribe(...) -> ReplayFrom(after)`:

    replay = Replay(fanout, answer.after)
    seek = replay.start(low)                 # Reset when retention has deleted the gap
    read `messages.committed` from `seek`; for each record at `offset`:
        if (sub := replay.handover(offset)) is not None: stop reading; stream `sub`
        out = replay.feed(offset, decoded Row/Delete, or None for anything else)
        Reset -> send `reset` then history; bytes -> send them
    at the partition's end (position `p`, nothing left to read): `replay.handover(p)`,
    after `await fanout.wait_past(p - 1)` if it is None.

Gap-free and duplicate-free by construction: the replay sends only offsets below the
ring's floor, the ring serves everything from the floor on, and both drop the same
duplicates because the replay's deduper first reads the window before the position.
"""

from __future__ import annotations

from feedsvc.relay.changefeed import Delete, Row
from feedsvc.relay.dedupe import Deduper, dedupe_key
from feedsvc.relay.fanout import Fanout, Reset, Subscription
from feedsvc.relay.frames import EventId, event_frame, tag_of


class Replay:
    """Frames after a position the ring no longer holds, rebuilt from the Kafka records."""

    def __init__(self, fanout: Fanout, after: EventId) -> None:
        self._fanout = fanout
        self.after = after
        self._dedupe = Deduper(fanout.dedupe_window)
        self._last_id = str(after)

    def start(self, low: int) -> int | Reset:
        """The offset to read from, given the partition's earliest offset `low`."""
        if low > self.after.offset + 1:
            return Reset(f"position {self.after} is older than the topic's retention")
        # Read the dedupe window before the position too, to drop what live readers drop.
        return max(low, self.after.offset + 1 - self._dedupe.window)

    def feed(self, offset: int, event: Row | Delete | None) -> bytes | Reset | None:
        """The frame to send for the record at `offset`, if any; Reset if the tag mismatches."""
        key = None if event is None else dedupe_key(event)
        duplicate = key is not None and self._dedupe.is_duplicate(offset, key)
        if offset < self.after.offset:
            return None
        if offset == self.after.offset:
            if self.after.tag is not None:
                if isinstance(event, Row):
                    found = tag_of(event.message.id)
                elif isinstance(event, Delete):
                    found = tag_of(event.id)
                else:
                    found = None
                if found != self.after.tag:
                    return Reset(f"no event {self.after} in this feed: the topic was recreated")
            return None
        if event is None or duplicate:
            return None
        eid, frame = event_frame(offset, event)
        self._last_id = eid
        return frame

    def handover(self, next_offset: int) -> Subscription | None:
        """Once the ring covers `next_offset` on, the live subscription that continues the
        replay (None: keep reading, or wait for the fanout to catch up).

        Note: `next_offset` is the offset of the next record the reader would feed.
        """
        fan = self._fanout
        if next_offset <= self.after.offset or next_offset < fan.floor:
            return None
        if next_offset > fan.head:
            # Only a gap in offsets gets here (records below the floor were fed, the floor
            # is at most the head): nothing lies between the head and next_offset.
            if fan.head < fan.floor:
                return None
            next_offset = fan.head
        return fan.subscribe_after(next_offset - 1, self._last_id)
