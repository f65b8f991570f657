"""The one polling helper of the benchmarks: wait for a condition with a bound."""

from __future__ import annotations

import time
from collections.abc import Callable


class Timeout(RuntimeError):
    """A condition did not hold within its bound."""


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
) -> float:
    """Call `check` until it is true; the seconds it took. Raises `Timeout` naming `what`."""
    began = time.monotonic()
    deadline = began + timeout
    while not check():
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - began


def wait_settled(
    read: Callable[[], int], target: int, idle_s: float, limit_s: float
) -> tuple[int, float]:
    """Poll `read` until it reaches `target`, stops changing for `idle_s`, or `limit_s` ends.

    Returns the last value read and when (monotonic) it last changed; for counts that
    grow, such as rows stored or events read.
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
