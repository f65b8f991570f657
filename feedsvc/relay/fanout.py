"""The fan-out of feed events to subscribers: one shared log of encoded frames, a cursor each.

Why a shared log rather than a queue per subscriber: `publish` encodes a frame once and
appends it once, whatever the number of subscribers; a subscriber's batch is a slice of
the log from its cursor (the same bytes objects for everyone). The log doubles as the
resume ring. A subscriber's "buffer" is how far its cursor trails the live end; past
`buffer_size` frames it is lagging: it gets a final `resume` frame and is dropped.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from uuid import UUID

from feedsvc.relay.changefeed import Delete, Row
from feedsvc.relay.dedupe import Deduper, dedupe_key
from feedsvc.relay.frames import EventId, event_frame, id_frame, parse_event_id, resume_frame


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


def without_history(
    frames: Sequence[bytes],
    keys: Sequence[UUID | None],
    ids: Sequence[str],
    history: AbstractSet[UUID],
) -> list[bytes]:
    """The frames, each message already sent as history replaced by an id-only frame.

    Note: the id-only frame keeps the client's Last-Event-ID moving, so a reconnect does
    not send that message again.
    """
    return [
        id_frame(eid) if key is not None and key in history else frame
        for frame, key, eid in zip(frames, keys, ids, strict=True)
    ]


class Fanout:
    """Events of `messages.committed` in offset order, to every subscriber, each once.

    `low` and `high` are the partition's earliest and end offsets when the relay starts:
    the relay reads from `start_offset` (warming the ring and the deduper) and serves
    subscribers once it has consumed up to `high` (until then `subscribe` answers `Ahead`).
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
        self.start_offset = max(low, high - window - ring_size)
        # Dedupe decisions are the same as every other process's only once the deduper
        # has seen a whole window (or the topic from its start): frames begin there.
        self._exact_from = (
            self.start_offset if self.start_offset == low else self.start_offset + window
        )
        self.ready_at = high
        self._dedupe = Deduper(window)
        # The log: parallel lists, index i holds frame number `_base + i`.
        self._frames: list[bytes] = []
        self._ids: list[str] = []
        self._offsets: list[int] = []
        self._keys: list[UUID | None] = []
        self._base = 0
        self._seq = 0
        self._evicted_floor = self._exact_from
        self._head = self.start_offset
        self._subs: set[Subscription] = set()
        # Subscribers waiting for frames: one future each, in arrival order (a dict as an
        # ordered set), so that each can also wait with a timeout of its own.
        self._waiters: dict[asyncio.Future[bool], None] = {}
        self._progress: asyncio.Event | None = None
        self._sweep_every = max(1, buffer_size // 2)
        self._until_sweep = self._sweep_every
        self._closed = False

    @property
    def head(self) -> int:
        """The next offset this fanout expects."""
        return self._head

    @property
    def floor(self) -> int:
        """The ring holds every event at offsets `floor .. head - 1`."""
        evicted = len(self._offsets) - self.ring_size
        return self._offsets[evicted - 1] + 1 if evicted > 0 else self._evicted_floor

    @property
    def position(self) -> str:
        """The event id of the newest event (history sent now carries it), or `head - 1`."""
        return self._ids[-1] if self._ids else str(self._head - 1)

    @property
    def closed(self) -> bool:
        """Whether `close` was called (the process is shutting down)."""
        return self._closed

    @property
    def subscribers(self) -> int:
        """Live subscriptions."""
        return len(self._subs)

    def publish(self, offset: int, event: Row | Delete) -> bool:
        """Deliver a row or delete at `offset`; False when it is a changefeed duplicate.

        Note: call in offset order, once per record (resolved and undecodable records go to
        `advance`). O(1) in the number of subscribers.
        """
        if offset < self._head:
            raise ValueError(f"offset {offset} is behind the head {self._head}")
        self._head = offset + 1
        key = dedupe_key(event)
        if self._dedupe.is_duplicate(offset, key) or offset < self._exact_from:
            self._wake_progress()
            return False
        eid, frame = event_frame(offset, event)
        self._frames.append(frame)
        self._ids.append(eid)
        self._offsets.append(offset)
        self._keys.append(event.message.id if isinstance(event, Row) else None)
        self._seq += 1
        if len(self._frames) >= 2 * self.ring_size:
            self._compact()
        self._wake_subscribers()
        self._wake_progress()
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._until_sweep = self._sweep_every
            self._sweep()
        return True

    def advance(self, offset: int) -> None:
        """Move past a record that is not an event (resolved, or undecodable and skipped)."""
        if offset >= self._head:
            self._head = offset + 1
            self._wake_progress()

    def subscribe(self, last_event_id: str | None) -> Subscription | ReplayFrom | Ahead | Reset:
        """Start a stream after `last_event_id`, or at the live end when None.

        Note: a new (None) subscription's `last_id` is the id to put on history events.
        """
        if self._closed:
            raise RuntimeError("the fanout is closed")
        if self._head < self.ready_at:
            return Ahead(self.ready_at - 1)
        if last_event_id is None:
            return self._attach(len(self._frames), self.position)
        after = parse_event_id(last_event_id)
        if after is None:
            return Reset("Last-Event-ID is not a position of this feed")
        if after.offset >= self._head:
            return Ahead(after.offset)
        floor = self.floor
        if after.tag is None:
            if after.offset < floor - 1:
                return ReplayFrom(after)
            return self.subscribe_after(after.offset, str(after))
        if after.offset < floor:
            # The record at that offset left the ring: only Kafka can check the tag.
            return ReplayFrom(after)
        start = max(0, len(self._offsets) - self.ring_size)
        i = bisect_left(self._offsets, after.offset, lo=start)
        if i == len(self._offsets) or self._ids[i] != str(after):
            return Reset(f"no event {after} in this feed: the topic was recreated")
        return self._attach(i + 1, str(after))

    def subscribe_after(self, offset: int, last_id: str) -> Subscription:
        """A subscription starting after `offset`, which must be `floor - 1 .. head - 1`."""
        if not self.floor - 1 <= offset < self._head:
            raise ValueError(f"offset {offset} is outside the ring")
        start = max(0, len(self._offsets) - self.ring_size)
        return self._attach(bisect_right(self._offsets, offset, lo=start), last_id)

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

    def _attach(self, index: int, last_id: str) -> Subscription:
        sub = Subscription(self, self._base + index, last_id)
        self._subs.add(sub)
        return sub

    def _lagging(self, sub: Subscription) -> bool:
        if sub._cursor < self._seq - self.ring_size:
            return True  # its next frame has left the ring
        if sub._waiting:
            return False  # it is ready for more: a burst published meanwhile is not its lag
        # Frames a resume started with are not live backlog; count only what came since.
        return self._seq - max(sub._cursor, sub._start) > self.buffer_size

    def _sweep(self) -> None:
        # Amortised O(subscribers / (buffer_size / 2)) per event: finds a stuck subscriber
        # within half a buffer of overflowing, without touching every one on every event.
        for sub in [s for s in self._subs if self._lagging(s)]:
            sub._mark_lagging()

    def _compact(self) -> None:
        drop = len(self._frames) - self.ring_size
        self._evicted_floor = self._offsets[drop - 1] + 1
        for log in (self._frames, self._ids, self._offsets, self._keys):
            del log[:drop]
        self._base += drop

    def _wake_subscribers(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, {}
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)

    def _wake_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    async def _wait_changed(self, seconds: float | None = None) -> bool:
        """Wait for the next wake-up (True) or, given `seconds`, that long at most (False).

        Note: a plain loop timer, not a cancel scope: a heartbeat timeout on every wait of
        every subscriber made anyio's cancel scopes ~15% of the api's CPU at 1,000 streams.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters[waiter] = None
        timer = None if seconds is None else loop.call_later(seconds, _expire, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiters.pop(waiter, None)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Subscription:
    """One feed client's stream: batches of frames, in offset order, each once.

    Note: if more than `buffer_size` frames pile up while the subscriber is busy (not
    waiting in `next_frames`), the stream ends with a `resume` frame whose id is the last
    one it was given; `on_lag`, when set, is called
    as soon as that is detected (e.g. to cancel a write stuck on a dead connection).
    """

    def __init__(self, fanout: Fanout, cursor: int, last_id: str) -> None:
        self._fanout = fanout
        self._cursor = cursor
        self._start = fanout._seq
        self.last_id = last_id
        """The id of the last frame taken (or the starting position): where to resume."""
        self.on_lag: Callable[[], None] | None = None
        self._history: AbstractSet[UUID] = frozenset()
        self._lagging = False
        self._waiting = False
        self._ended = False

    @property
    def ended(self) -> bool:
        """Whether the stream is over (closed, lagging and told, or the fanout closed)."""
        return self._ended

    def exclude(self, history: AbstractSet[UUID]) -> None:
        """Skip messages already sent as history (DESIGN §3 handoff); their ids still advance."""
        self._history = history

    def take(self) -> list[bytes]:
        """Every pending frame now, without waiting; empty when none (or `ended`)."""
        if self._ended:
            return []
        fan = self._fanout
        if self._lagging or fan._lagging(self):
            self._end()
            return [resume_frame(self.last_id, "the client fell behind; reconnect to resume")]
        start, end = self._cursor - fan._base, len(fan._frames)
        if start >= end:
            if fan._closed:
                self._end()
            return []
        frames = fan._frames[start:end]
        if self._history:
            frames = without_history(
                frames, fan._keys[start:end], fan._ids[start:end], self._history
            )
        self.last_id = fan._ids[end - 1]
        self._cursor = fan._seq
        return frames

    async def next_frames(self) -> list[bytes]:
        """The next batch of frames, waiting for one; an empty batch means the stream ended."""
        frames = await self.next_frames_within(None)
        assert frames is not None
        return frames

    async def next_frames_within(self, seconds: float | None) -> list[bytes] | None:
        """Like `next_frames`, but None when nothing came within `seconds` (None: no limit)."""
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while True:
            frames = self.take()
            if frames or self._ended:
                return frames
            timeout = None if deadline is None else deadline - loop.time()
            if timeout is not None and timeout <= 0:
                return None
            self._waiting = True
            try:
                await self._fanout._wait_changed(timeout)
            finally:
                self._waiting = False
                # What was published while it waited (or was woken but not yet running)
                # found it ready: that is not backlog; only what piles up while busy is.
                self._start = self._fanout._seq

    def close(self) -> None:
        """End the stream now and leave the fanout (the client went away)."""
        if not self._ended:
            self._end()
            self._fanout._wake_subscribers()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[bytes]:
        frames = await self.next_frames()
        if not frames:
            raise StopAsyncIteration
        return frames

    def _mark_lagging(self) -> None:
        self._lagging = True
        self._fanout._subs.discard(self)
        self._fanout._wake_subscribers()
        if self.on_lag is not None:
            self.on_lag()

    def _end(self) -> None:
        self._ended = True
        self._fanout._subs.discard(self)
