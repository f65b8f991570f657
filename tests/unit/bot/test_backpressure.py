"""`Retry-After` is read in both forms, and the shared pause and backoff hold every worker."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import anyio
import pytest

from bot.backpressure import (
    DEFAULT_RETRY_AFTER_S,
    MAX_RETRY_AFTER_S,
    Backpressure,
    parse_retry_after,
)

NOW = datetime(2026, 11, 26, 21, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        (format_datetime(NOW + timedelta(seconds=10), usegmt=True), 10.0),
        ("Thu, 26 Nov 2026 21:30:07 GMT", 7.0),
        ("Thu, 26 Nov 2026 21:29:00 GMT", 0.0),  # a date in the past: send now
        ("86400", MAX_RETRY_AFTER_S),
        (None, DEFAULT_RETRY_AFTER_S),
        ("soon", DEFAULT_RETRY_AFTER_S),
        ("-5", DEFAULT_RETRY_AFTER_S),
        ("nan", DEFAULT_RETRY_AFTER_S),
    ],
)
def test_retry_after_header_is_read(header: str | None, seconds: float) -> None:
    """Delta-seconds and HTTP-dates give the wait; anything unreadable gives the default."""
    assert parse_retry_after(header, now=NOW) == pytest.approx(seconds)


@pytest.mark.anyio
async def test_retry_after_holds_until_it_elapses() -> None:
    """`wait` returns only once the `Retry-After` time has passed."""
    pressure = Backpressure()
    pressure.retry_after(0.3)
    start = anyio.current_time()
    await pressure.wait(anyio.Event())
    assert anyio.current_time() - start >= 0.3


@pytest.mark.anyio
async def test_shorter_wait_does_not_cut_a_longer_one() -> None:
    """A second, shorter `Retry-After` leaves the first one's end in place."""
    pressure = Backpressure()
    pressure.retry_after(0.3)
    pressure.retry_after(0.01)
    assert pressure.remaining > 0.25


@pytest.mark.anyio
async def test_stop_ends_the_wait() -> None:
    """A stop does not wait out a long `Retry-After`."""
    pressure = Backpressure()
    pressure.retry_after(60)
    stop = anyio.Event()
    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pressure.wait, stop)
            await anyio.sleep(0.05)
            stop.set()


@pytest.mark.anyio
async def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    """Consecutive failures double the hold (with up to half of it as jitter) until the cap."""
    pressure = Backpressure(base_s=0.1, cap_s=1.0, rnd=random.Random(1))
    delays = [pressure.failed() for _ in range(7)]
    steps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for delay, step in zip(delays, steps, strict=True):
        assert step / 2 <= delay <= step
    pressure.answered()
    assert pressure.failed() <= 0.1
