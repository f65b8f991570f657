"""The waits of streams for the fan-out's next change, and the one clock that ends them.

A wait is a future; a change wakes every wait a batch per loop turn (`WAKE_BATCH`), a
stream that leaves wakes only its own, and a wait with a timeout is ended by one clock for
all of them instead of a timer each (ARCHITECTURE.md#slow-clients).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

WAKE_BATCH = 256
"""Waits woken per turn of the event loop when an event comes. A woken stream runs
its step (take, yield, write) in the next turn; waking thousands at once made one turn of
a whole broadcast, and every post, Kafka acknowledgement and heartbeat in between waited
for it (POST p99 8 s with 40,000 streams open). The rest are woken a batch a turn."""

TIMEOUT_TICKS = 16
"""A wait with a timeout ends within its last 1/TIMEOUT_TICKS: the one clock ends the waits
that are due together, about that many times per timeout. Fewer ticks mean fewer scans of
the waits, but earlier, and so more, heartbeats: at 40,000 idle streams a scan costs ~2 ms
a second and a heartbeat ~75 µs, so ending waits 1/16 early at most (3 % more heartbeats on
average) costs less than ending them 1/4 early (14 %)."""

_GONE = (math.nan, math.nan)


class Timer(Protocol):
    """A call scheduled by a `Clock`."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """The time, and calls at a time: the running event loop, or a test's fake."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object], /) -> Timer: ...


class Waits:
    """Streams waiting for the next change: each wakes True, or False once its time is up.

    Note: a wait with a timeout ends in its last `1 / TIMEOUT_TICKS`, never later. Waking
    one wait (`wake`), starting one and ending one are O(1) in the number of waits.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._given = clock
        # One future each, in arrival order, with the times from which its wait may end and
        # by which it must (None: no timeout), which one clock (`_time_out`) checks.
        self._waiters: dict[asyncio.Future[bool], tuple[float, float] | None] = {}
        self._timer: Timer | None = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        return len(self._waiters)

    @property
    def clock(self) -> Clock:
        """The clock given, or the running loop's."""
        return self._given or asyncio.get_running_loop()

    def start(self, seconds: float | None) -> asyncio.Future[bool]:
        """A new wait, ending within `seconds` (None: only when woken); `end` it after."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if seconds is None:
            self._waiters[waiter] = None
        else:
            clock = self.clock
            end = clock.time() + seconds
            self._waiters[waiter] = (end - seconds / TIMEOUT_TICKS, end)
            if self._timer is None or end < self._timer_at:
                self._set_timer(clock, end)
        return waiter

    def end(self, waiter: asyncio.Future[bool]) -> None:
        """Forget a wait that returned or was cancelled."""
        self._waiters.pop(waiter, None)

    async def wait(self, seconds: float | None) -> bool:
        """Wait for the next wake-up (True) or, given `seconds`, at most that long (False)."""
        waiter = self.start(seconds)
        try:
            return await waiter
        finally:
            self.end(waiter)

    def wake(self, waiter: asyncio.Future[bool]) -> None:
        """Wake one wait now (its stream ended): the others sleep on.

        Note: a wait that `wake_all` or the clock already took is left to their batches.
        """
        if self._waiters.pop(waiter, _GONE) is not _GONE and not waiter.done():
            waiter.set_result(True)

    def wake_all(self) -> None:
        """Wake every wait, `WAKE_BATCH` in this turn of the loop, the rest in later turns."""
        if self._waiters:
            waiters, self._waiters = self._waiters, {}
            _wake(list(waiters), 0)

    def _set_timer(self, clock: Clock, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = clock.call_at(at, self._time_out)

    def _time_out(self) -> None:
        """End every wait in its last part; set the timer for the first end of the rest."""
        self._timer = None
        clock = self.clock
        now = clock.time()
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
            self._set_timer(clock, next_end)


def _wake(waiters: list[asyncio.Future[bool]], start: int, result: bool = True) -> None:
    """Wake `waiters` from `start` on with `result`, `WAKE_BATCH` in this turn of the loop,
    the rest in the following turns (each of which polls I/O first)."""
    end = start + WAKE_BATCH
    for waiter in waiters[start:end]:
        if not waiter.done():  # not timed out or cancelled meanwhile
            waiter.set_result(result)
    if end < len(waiters):
        asyncio.get_running_loop().call_soon(_wake, waiters, end, result)
