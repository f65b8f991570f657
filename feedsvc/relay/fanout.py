"""The fan-out of feed events to subscribers: one shared log of encoded frames, a cursor each.

Why a shared log rather than a queue per subscriber: `publish` encodes a frame once and
appends it once, whatever the number of subscribers; a subscriber's batch is a slice of
the log from its cursor (the same bytes objects for everyone). The log doubles as the
resume ring. A subscriber's "buffer" is how far its cursor trails the live end; past
`buffer_size` frames it is lagging: it gets a final `resume` frame and is dropped.
"""

from __future__ import annotations

import asyncio
import time

from feedsvc.relay.answers import Ahead, ReplayFrom, Reset
from feedsvc.relay.changefeed import Delete, Row
from feedsvc.relay.dedupe import Deduper
from feedsvc.relay.frames import EventId, event_frame, parse_event_id
from feedsvc.relay.log import FrameLog
from feedsvc.relay.subscription import Subscription
from feedsvc.relay.waits import Clock, Waits


class Fanout:
    """Events of `messages.committed` in changefeed order, to every subscriber, each once.

    `low` and `high` are the partition's earliest and end offsets when the relay starts:
    the relay reads from `start_offset` (warming the deduper) and serves subscribers once
    it has consumed up to `high` and its dedupe decisions are those of every other reader
    (`Deduper.exact_at`); until then `ready` is False and `subscribe` answers `Ahead`.
    Note: exactness needs a resolved record at or after `start_offset`; a changefeed emits
    one every second, but if none is in the warm-up window (the changefeed is down) the
    relay stays not ready until the next one arrives.
    """

    def __init__(
        self,
        ring_size: int,
        buffer_size: int,
        *,
        low: int = 0,
        high: int = 0,
        dedupe_window: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not 1 <= buffer_size <= ring_size:
            raise ValueError(
                "need 1 <= buffer_size <= ring_size: a subscriber's backlog "
                "must still be in the ring"
            )
        window = 2 * ring_size if dedupe_window is None else dedupe_window
        if window < ring_size:
            raise ValueError("the dedupe window must span at least the ring")
        self.ring_size = ring_size
        self.buffer_size = buffer_size
        self.dedupe_window = window
        self.generation = 0
        """How many times `restart` was called: replays started before it cannot hand over."""
        self.restart_reason = ""
        self.lag_cuts = 0
        """Subscriptions ended for falling behind, since start."""
        self.sent = 0
        """Live frames handed to subscribers, since start."""
        self._subs: set[Subscription] = set()
        self.barrier: tuple[int, str] | None = None
        """The newest gap marker read (its offset and why): positions before it are reset."""
        self._start(low, high)
        self.waits = Waits(clock)
        """Subscribers waiting for frames (`Subscription.next_frames_within`)."""
        self._progress: asyncio.Event | None = None
        self._sweep_every = max(1, buffer_size // 2)
        self._until_sweep = self._sweep_every
        self._closed = False

    def _start(self, low: int, high: int) -> None:
        self.start_offset = max(low, high - self.dedupe_window - self.ring_size)
        self.ready_at = high
        # A reader starting at the partition's earliest offset has seen all there is.
        start = 0 if self.start_offset == low else self.start_offset
        self._dedupe = Deduper(self.dedupe_window, start)
        exact_from = self._dedupe.exact_from
        self.log = FrameLog(self.ring_size, self.start_offset if exact_from is None else exact_from)
        """The recent events (read-only outside the relay)."""
        self._floor_known = exact_from is not None
        self._head = self.start_offset

    def restart(self, low: int, high: int, reason: str) -> None:
        """Start over from a partition whose bounds are now `low .. high` (our position was
        lost: the topic was recreated, or retention deleted records not yet read).

        Note: every subscription ends with `reset_reason` set; read from `start_offset`.
        """
        self.generation += 1
        self.restart_reason = reason
        self.waits.wake_all()  # first: the waits end a batch a turn (`WAKE_BATCH`)
        for sub in list(self._subs):
            sub.reset_reason = reason
            sub.close()
        self._start(low, high)
        self._wake_progress()

    def gap(self, offset: int, reason: str) -> None:
        """Move past setup's marker that the changefeed restarted with a gap at `offset`.

        Note: what the changefeed missed is in no record, so nothing before the marker can
        be continued: every open stream ends with `reset_reason` (the client gets `reset`
        and history again), positions before it are answered `Reset`, and the ring starts
        empty after it, so every id handed out from now on is past the marker.
        """
        if offset < self._head:
            raise ValueError(f"offset {offset} is behind the head {self._head}")
        self.generation += 1
        self.restart_reason = reason
        self.barrier = (offset, reason)
        self.waits.wake_all()  # first: the waits end a batch a turn (`WAKE_BATCH`)
        for sub in list(self._subs):
            sub.reset_reason = reason
            sub.close()
        self._head = offset + 1
        if self._floor_known:
            self.log = FrameLog(self.ring_size, self._head)
        self._wake_progress()

    @property
    def head(self) -> int:
        """The next offset this fanout expects."""
        return self._head

    @property
    def ready(self) -> bool:
        """Whether it has caught up with `high` and decides exactly (subscribers welcome)."""
        return self._head >= self.ready_at and self._dedupe.exact_at(self._head)

    @property
    def floor(self) -> int:
        """The ring holds every event at offsets `floor .. head - 1`."""
        return self.log.floor if self._floor_known else self._head

    @property
    def resolved(self) -> int | None:
        """The highest resolved timestamp read so far (an `hlc_value`)."""
        return self._dedupe.resolved

    @property
    def position(self) -> EventId:
        """The position of the newest event, or `head - 1` when there is none."""
        last = self.log.last_id
        if last is None:
            return EventId(self._head - 1, None)
        parsed = parse_event_id(last)
        assert parsed is not None
        return parsed

    @property
    def closed(self) -> bool:
        """Whether `close` was called (the process is shutting down)."""
        return self._closed

    @property
    def subscribers(self) -> int:
        """Live subscriptions."""
        return len(self._subs)

    def publish(self, offset: int, event: Row | Delete, read_at: float | None = None) -> bool:
        """Deliver a row or delete at `offset`; False when it is a changefeed repeat.

        Note: call in offset order, once per record (resolved records go to `resolve`,
        undecodable ones to `advance`). O(1) in the number of subscribers. `read_at`
        (`time.monotonic()`, default now) is when the record was read from Kafka.
        """
        if offset < self._head:
            raise ValueError(f"offset {offset} is behind the head {self._head}")
        self._head = offset + 1
        resolved_before = self._dedupe.resolved
        if self._dedupe.is_duplicate(offset, event) or not self._dedupe.exact_at(offset):
            self._wake_progress()
            return False
        eid, frame = event_frame(offset, event)
        read_at = time.monotonic() if read_at is None else read_at
        self.log.append(offset, event, eid, frame, resolved_before, read_at)
        self.waits.wake_all()
        self._wake_progress()
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._until_sweep = self._sweep_every
            self._sweep()
        return True

    def resolve(self, offset: int, hlc: str) -> None:
        """Move past a resolved record: rows at or below `hlc` are repeats from now on."""
        if offset < self._head:
            raise ValueError(f"offset {offset} is behind the head {self._head}")
        self._dedupe.see_resolved(offset, hlc)
        if not self._floor_known and (exact_from := self._dedupe.exact_from) is not None:
            self.log.move_floor(exact_from)
            self._floor_known = True
        self.advance(offset)

    def advance(self, offset: int) -> None:
        """Move past a record that is not an event (undecodable and skipped)."""
        if offset >= self._head:
            self._head = offset + 1
            self._wake_progress()

    def subscribe(self, last_event_id: str | None) -> Subscription | ReplayFrom | Ahead | Reset:
        """Start a stream after `last_event_id`, or at the live end when None.

        Note: a new (None) subscription's `position` is where history is read from: call
        `start_snapshot` with the history's snapshot time for the history events' id.
        """
        if self._closed:
            raise RuntimeError("the fanout is closed")
        if not self.ready:
            return Ahead(max(self.ready_at, self._head) - 1)
        if last_event_id is None:
            return self._attach(self.log.seq, self.position)
        after = parse_event_id(last_event_id)
        if after is None:
            return Reset("unknown position: Last-Event-ID is not a position of this feed")
        if after.offset >= self._head:
            return Ahead(after.offset)
        if self.barrier is not None and after.offset < self.barrier[0]:
            return Reset(self.barrier[1])
        floor = self.floor
        if after.tag is None:
            if after.offset < floor - 1:
                return ReplayFrom(after)
            return self.subscribe_after(after.offset, after)
        if after.offset < floor:
            # The record at that offset left the ring: only Kafka can check the tag.
            return ReplayFrom(after)
        found = self.log.find(after.offset)
        if found is None or found[1] != str(after.at(None)):
            return Reset(f"no event {after.at(None)} in this feed: the topic was recreated")
        return self._attach(found[0] + 1, after)

    def subscribe_after(self, offset: int, last: EventId) -> Subscription:
        """A subscription starting after `offset`, which must be `floor - 1 .. head - 1`."""
        if not self.floor - 1 <= offset < self._head:
            raise ValueError(f"offset {offset} is outside the ring")
        return self._attach(self.log.seq_after(offset), last)

    async def wait_past(self, offset: int) -> None:
        """Return once the record at `offset` has been consumed (bound it with a timeout)."""
        while self._head <= offset:
            if self._progress is None:
                self._progress = asyncio.Event()
            await self._progress.wait()

    def close(self) -> None:
        """End every subscription once it has taken its pending frames (shutdown)."""
        self._closed = True
        self.waits.wake_all()

    def _attach(self, seq: int, last: EventId) -> Subscription:
        sub = Subscription(self, seq, last)
        self._subs.add(sub)
        return sub

    def leave(self, sub: Subscription) -> None:
        """Forget a subscription that ended (it stops counting as a subscriber).

        Note: O(1), and no other subscriber wakes (ARCHITECTURE.md#slow-clients).
        """
        self._subs.discard(sub)

    def _sweep(self) -> None:
        # Amortised O(subscribers / (buffer_size / 2)) per event: finds a stuck subscriber
        # within half a buffer of overflowing, without touching every one on every event.
        seq = self.log.seq
        for sub in [s for s in self._subs if s.behind(seq, self.ring_size, self.buffer_size)]:
            sub.mark_lagging()

    def _wake_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = None
