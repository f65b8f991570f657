"""Bounded waits: poll a condition until it holds or its time is up, then fail naming it.

The one polling helper of the dev stack, the tests and the benchmarks: every wait has a
bound and says what it waited for, so a timeout reads "timed out after 30s waiting for
PostgreSQL to accept connections", not a bare assertion or a hang.
"""

from __future__ import annotations

import reprlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


class Timeout(TimeoutError):
    """A condition did not hold within its bound; the message names it (and the last value)."""


def _short(value: object) -> str:
    """The last value in a timeout message: enough to see what was there, not a page of it."""
    short = reprlib.Repr()
    short.maxlist = short.maxdict = 20
    short.maxstring = short.maxother = 300
    return short.repr(value)


def _timed_out(within: float, what: str, last: object) -> Timeout:
    # A false bool says nothing; a count, a status or None does.
    seen = "" if isinstance(last, bool) else f"; last: {_short(last)}"
    return Timeout(f"timed out after {within:g}s waiting for {what}{seen}")


def wait_until(
    check: Callable[[], T],
    within: float,
    what: str,
    interval: float = 0.05,
    max_interval: float = 0.5,
) -> T:
    """Call `check` until it returns a true value and return that; raises `Timeout` after
    `within` seconds, naming `what`.

    Note: the pause between calls grows by half each round up to `max_interval`, so a
    condition that holds at once costs one call and a slow one costs few; pass
    `max_interval=interval` for an even pace (a measured duration then has that resolution).
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(within, what, result)
        time.sleep(interval)
        interval = max(interval, min(interval * 1.5, max_interval))


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    within: float,
    what: str,
    interval: float = 0.1,
) -> T:
    """Await `probe` until `done(result)` and return that result; raises `Timeout` after
    `within` seconds, naming `what` and the last result (the async twin of `wait_until`).
    """
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(within, what, result)
        await anyio.sleep(interval)


def wait_settled(
    read: Callable[[], int], target: int, idle_s: float, limit_s: float
) -> tuple[int, float]:
    """Poll `read` until it reaches `target`, stops changing for `idle_s`, or `limit_s` ends.

    Returns the last value read and when (monotonic) it last changed; for counts that
    grow, such as rows stored or events read. Never raises: the caller judges the count.
    """
    last, changed, began = read(), time.monotonic(), time.monotonic()
    while last < target and time.monotonic() - began < limit_s:
        time.sleep(0.25)
        now = read()
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed > idle_s:
            break
    return last, changed
