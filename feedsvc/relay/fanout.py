"""The fan-out of feed events to subscribers: one shared log of encoded frames, a cursor each.

Why a shared log rather than a queue per subscriber: `publish` encodes a frame once and
appends it once, whatever the number of subscribers; a subscriber's batch is a slice of
the log from its cursor (the same bytes objects for everyone). The log doubles as the
resume ring. A subscriber's "buffer" is how far its cursor trails the live end; past
`buffer_size` frames it is lagging: it gets a final `resume` frame and is dropped.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from feedsvc.relay.changefeed import Delete, Row
from feedsvc.relay.dedupe import Deduper
from feedsvc.relay.frames import (
    EventId,
    event_frame,
    parse_event_id,
    resume_frame,
    snapshot_frame,
)
from feedsvc.relay.log import Entries, FrameLog

WAKE_BATCH = 256
"""Subscribers woken per turn of the event loop when an event comes. A woken stream runs
its step (take, yield, write) in the next turn; waking thousands at once made one turn of
a whole broadcast, and every post, Kafka acknowledgement and heartbeat in between waited
for it (POST p99 8 s with 40,000 streams open). The rest are woken a batch a turn."""

TIMEOUT_TICKS = 16
"""A wait with a timeout ends within its last 1/TIMEOUT_TICKS (`Fanout.wait_changed`): the
fanout's one clock ends the waits that are due together, about that many times per timeout.
Fewer ticks mean fewer scans of the waits, but earlier, and so more, heartbeats: at 40,000
idle streams a scan costs ~2 ms a second and a heartbeat ~75 µs, so ending waits 1/16 early
at most (3 % more heartbeats on average) costs less than ending them 1/4 early (14 %)."""

DELIVERY_SAMPLE = 16
"""Events whose sequence number is a multiple of this have their delivery time taken, for
every subscriber (`Subscription.sampled`): a uniform sample of deliveries that
costs the fan-out's hot path one division per batch, not a histogram update per frame."""


@dataclass(frozen=True, slots=True)
class Reset:
    """The position cannot be served (not our id, or the topic was recreated)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ahead:
    """This process has not consumed the record at `offset` yet (warming up, or behind
    another replica): `await fanout.wait_past(offset)` with a timeout, then subscribe again."""

    offset: int


@dataclass(frozen=True, slots=True)
class ReplayFrom:
    """The position is older than the ring: serve it from Kafka through `relay.replay.Replay`."""

    after: EventId


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
        # Subscribers waiting for frames: one future each, in arrival order, with the loop
        # times from which its wait may end and by which it must (None: no timeout), which
        # one clock (`_time_out`) checks.
        self._waiters: dict[asyncio.Future[bool], tuple[float, float] | None] = {}
        self._clock: asyncio.TimerHandle | None = None
        self._clock_at = 0.0
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
        for sub in list(self._subs):
            sub.reset_reason = reason
            sub.close()
        self._start(low, high)
        self._wake_subscribers()
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
        for sub in list(self._subs):
            sub.reset_reason = reason
            sub.close()
        self._head = offset + 1
        if self._floor_known:
            self.log = FrameLog(self.ring_size, self._head)
        self._wake_subscribers()
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
        self._wake_subscribers()
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
        self._wake_subscribers()

    def _attach(self, seq: int, last: EventId) -> Subscription:
        sub = Subscription(self, seq, last)
        self._subs.add(sub)
        return sub

    def leave(self, sub: Subscription) -> None:
        """Forget a subscription that ended (it stops counting as a subscriber)."""
        self._subs.discard(sub)
        self._wake_subscribers()

    def _sweep(self) -> None:
        # Amortised O(subscribers / (buffer_size / 2)) per event: finds a stuck subscriber
        # within half a buffer of overflowing, without touching every one on every event.
        seq = self.log.seq
        for sub in [s for s in self._subs if s.behind(seq, self.ring_size, self.buffer_size)]:
            sub.mark_lagging()

    def _wake_subscribers(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, {}
            _wake(list(waiters), 0)

    def _wake_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    async def wait_changed(self, seconds: float | None = None) -> bool:
        """Wait for the next wake-up (True) or, given `seconds`, at most that long (False).

        Note: a wait with a timeout ends in its last `1 / TIMEOUT_TICKS`, never later: one
        clock per fanout ends every wait that is due, not a timer each. Subscribers wait
        once per batch, and a timer started and cancelled on every wait was ~14 % of the
        fan-out's CPU (py-spy); anyio's cancel scopes, before that, ~15 % of the api's.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        if seconds is None:
            self._waiters[waiter] = None
        else:
            end = loop.time() + seconds
            self._waiters[waiter] = (end - seconds / TIMEOUT_TICKS, end)
            if self._clock is None or end < self._clock_at:
                self._set_clock(loop, end)
        try:
            return await waiter
        finally:
            self._waiters.pop(waiter, None)

    def _set_clock(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._clock is not None:
            self._clock.cancel()
        self._clock_at = at
        self._clock = loop.call_at(at, self._time_out)

    def _time_out(self) -> None:
        """End every wait in its last part; set the clock for the first end of the rest."""
        self._clock = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired: list[asyncio.Future[bool]] = []
        next_end = math.inf
        for waiter, span in self._waiters.items():
            if span is not None:
                may_end, end = span
                if may_end <= now:
                    expired.append(waiter)
                elif end < next_end:
                    next_end = end
        for waiter in expired:
            del self._waiters[waiter]
        if expired:
            _wake(expired, 0, False)
        if next_end != math.inf:
            self._set_clock(loop, next_end)


def _wake(waiters: list[asyncio.Future[bool]], start: int, result: bool = True) -> None:
    """Wake `waiters` from `start` on with `result`, `WAKE_BATCH` in this turn of the loop,
    the rest in the following turns (each of which polls I/O first)."""
    end = start + WAKE_BATCH
    for waiter in waiters[start:end]:
        if not waiter.done():  # not timed out or cancelled meanwhile
            waiter.set_result(result)
    if end < len(waiters):
        asyncio.get_running_loop().call_soon(_wake, waiters, end, result)


def filtered(entries: Entries, snapshot: int) -> tuple[list[bytes], str | None, int | None]:
    """Frames of `entries` for a stream filtered by history snapshot T (see `snapshot_frame`).

    Returns the frames, the id of the last one, and the snapshot still in force after them:
    None once an entry follows a resolved timestamp >= T (no row committed at or before T
    can come after it, so plain ids suffice from there on).
    """
    frames: list[bytes] = []
    last: str | None = None
    active: int | None = snapshot
    for i, event in enumerate(entries.events):
        resolved = entries.resolved[i]
        if active is not None and resolved is not None and resolved >= active:
            active = None
        if active is None:
            frames.append(entries.frames[i])
            last = entries.ids[i]
        else:
            last, frame = snapshot_frame(entries.offsets[i], event, active)
            frames.append(frame)
    return frames, last, active


class Subscription:
    """One feed client's stream: batches of frames, in offset order, each once.

    Note: if more than `buffer_size` frames pile up while the subscriber is busy (not
    waiting in `next_frames_within`), the stream ends with a `resume` frame whose id is
    the last one it was given; `on_lag`, when set, is called as soon as that is detected
    (e.g. to unblock a write stuck on a dead connection).
    """

    def __init__(self, fanout: Fanout, cursor: int, last: EventId) -> None:
        self._fanout = fanout
        self._cursor = cursor
        self._start = fanout.log.seq
        self.last_id = str(last)
        """The id of the last frame taken (or the starting position): where to resume."""
        self.snapshot = last.snapshot
        """The history snapshot time still filtering this stream (None: none)."""
        self.on_lag: Callable[[], None] | None = None
        self.reset_reason: str | None = None
        """Set when the fanout restarted under this stream (`Fanout.restart`): tell the client."""
        self.sampled: tuple[float, ...] = ()
        """When the sampled events (`DELIVERY_SAMPLE`) of the last batch taken were read
        from Kafka (`time.monotonic()`); mostly none."""
        self._generation = fanout.generation
        self._lagging = False
        self._waiting = False
        self._ended = False

    @property
    def ended(self) -> bool:
        """Whether the stream is over (closed, lagging and told, or the fanout closed)."""
        return self._ended

    @property
    def lagging(self) -> bool:
        """Whether it was cut for falling behind."""
        return self._lagging

    def start_snapshot(self, snapshot: int) -> str:
        """Filter this new stream by its history's snapshot time; returns the history's id.

        Note: rows after the position with `updated` <= `snapshot` were committed before
        the history read, so they are history (or older history): not sent again.
        """
        position = parse_event_id(self.last_id)
        assert position is not None
        self.snapshot = snapshot
        self.last_id = str(position.at(snapshot))
        return self.last_id

    def take(self) -> list[bytes]:
        """Every pending frame now, without waiting; empty when none (or `ended`)."""
        if self._ended:
            return []
        fan = self._fanout
        if self._generation != fan.generation:
            self.reset_reason = self.reset_reason or "the feed restarted"
            self._end()
            return []
        if self._lagging or self.behind(fan.log.seq, fan.ring_size, fan.buffer_size):
            self._lagging = True
            self._end()
            return [resume_frame(self.last_id, "the client fell behind; reconnect to resume")]
        log = fan.log
        end = log.seq
        if self._cursor >= end:
            if fan.closed:
                self._end()
            return []
        if self.snapshot is None:
            frames = log.frames_since(self._cursor)
            self.last_id = log.id_before(end)
        else:
            frames, last, self.snapshot = filtered(log.since(self._cursor), self.snapshot)
            assert last is not None
            self.last_id = last
        first = -(-self._cursor // DELIVERY_SAMPLE) * DELIVERY_SAMPLE
        self.sampled = (
            tuple(log.read_at(s) for s in range(first, end, DELIVERY_SAMPLE)) if first < end else ()
        )
        fan.sent += len(frames)
        self._cursor = end
        return frames

    async def next_frames_within(self, seconds: float | None) -> list[bytes] | None:
        """The next batch of frames, waiting for one; None when nothing came within `seconds`.

        Note: an empty batch means the stream ended; `seconds` None waits without limit.
        """
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        timed_out = False
        while True:
            frames = self.take()
            if frames or self._ended:
                return frames
            timeout = None if deadline is None else deadline - loop.time()
            if timed_out or (timeout is not None and timeout <= 0):
                return None  # the fanout's clock may end a wait a little early: it is over
            self._waiting = True
            try:
                timed_out = not await self._fanout.wait_changed(timeout)
            finally:
                self._waiting = False
                # What was published while it waited (or was woken but not yet running)
                # found it ready: that is not backlog; only what piles up while busy is.
                self._start = self._fanout.log.seq

    def close(self) -> None:
        """End the stream now and leave the fanout (the client went away)."""
        if not self._ended:
            self._ended = True
            self._fanout.leave(self)

    def behind(self, seq: int, ring_size: int, buffer_size: int) -> bool:
        """Whether it lags, the log's next sequence number being `seq`."""
        if self._cursor < seq - ring_size:
            return True  # its next frame has left the ring
        if self._waiting:
            return False  # it is ready for more: a burst published meanwhile is not its lag
        # Frames a resume started with are not live backlog; count only what came since.
        return seq - max(self._cursor, self._start) > buffer_size

    def mark_lagging(self) -> None:
        """It fell behind: leave the fanout; its next `take` is the `resume` frame."""
        self._lagging = True
        self._fanout.lag_cuts += 1
        self._fanout.leave(self)
        if self.on_lag is not None:
            self.on_lag()

    def _end(self) -> None:
        self._ended = True
        self._fanout.leave(self)
