"""One stream's place in the fan-out: a cursor in the shared frame log, and its one wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from feedsvc.relay.frames import EventId, parse_event_id, resume_frame
from feedsvc.relay.snapshot import filtered

if TYPE_CHECKING:
    from feedsvc.relay.fanout import Fanout

DELIVERY_SAMPLE = 16
"""Events whose sequence number is a multiple of this have their delivery time taken, for
every subscriber (`Subscription.sampled`): a uniform sample of deliveries that
costs the fan-out's hot path one division per batch, not a histogram update per frame."""


class Subscription:
    """One feed client's stream: batches of frames, in offset order, each once.

    Note: if more than `buffer_size` frames pile up while the subscriber is busy (not
    waiting in `next_frames_within`), the stream ends with a `resume` frame whose id is
    the last one it was given; `on_lag`, when set, is called as soon as that is detected
    (e.g. to unblock a write stuck on a dead connection). Ending a stream wakes only its
    own wait, never the other streams' (ARCHITECTURE.md#slow-clients).
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
        self._waiter: asyncio.Future[bool] | None = None
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
        waits = self._fanout.waits
        clock = waits.clock
        deadline = None if seconds is None else clock.time() + seconds
        timed_out = False
        while True:
            frames = self.take()
            if frames or self._ended:
                return frames
            timeout = None if deadline is None else deadline - clock.time()
            if timed_out or (timeout is not None and timeout <= 0):
                return None  # the fanout's clock may end a wait a little early: it is over
            self._waiter = waiter = waits.start(timeout)
            try:
                timed_out = not await waiter
            finally:
                waits.end(waiter)
                self._waiter = None
                # What was published while it waited (or was woken but not yet running)
                # found it ready: that is not backlog; only what piles up while busy is.
                self._start = self._fanout.log.seq

    def close(self) -> None:
        """End the stream now and leave the fanout (the client went away)."""
        if not self._ended:
            self._end()

    def behind(self, seq: int, ring_size: int, buffer_size: int) -> bool:
        """Whether it lags, the log's next sequence number being `seq`."""
        if self._cursor < seq - ring_size:
            return True  # its next frame has left the ring
        if self._waiter is not None:
            return False  # it is ready for more: a burst published meanwhile is not its lag
        # Frames a resume started with are not live backlog; count only what came since.
        return seq - max(self._cursor, self._start) > buffer_size

    def mark_lagging(self) -> None:
        """It fell behind: leave the fanout; its next `take` is the `resume` frame."""
        self._lagging = True
        self._fanout.lag_cuts += 1
        self._leave()
        if self.on_lag is not None:
            self.on_lag()

    def _end(self) -> None:
        self._ended = True
        self._leave()

    def _leave(self) -> None:
        # Closed from outside while its own task waits (restart, gap, lag): wake that task
        # alone, to take its end: the other streams have nothing new.
        self._fanout.leave(self)
        if self._waiter is not None:
            self._fanout.waits.wake(self._waiter)
