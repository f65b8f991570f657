"""The token bucket paces requests exactly, and obeys a rate change at once."""

from __future__ import annotations

import anyio
import pytest

from bot.pacing import TokenBucket

pytestmark = pytest.mark.anyio


async def _take_for(bucket: TokenBucket, seconds: float) -> int:
    taken = 0
    with anyio.move_on_after(seconds):
        while await bucket.acquire():
            taken += 1
    return taken


@pytest.mark.parametrize("rate", [20.0, 1000.0])
async def test_tokens_come_at_the_rate(rate: float) -> None:
    """Over a window, one eager taker gets rate x window tokens (plus the first), within 2%."""
    bucket = TokenBucket(rate)
    taken = await _take_for(bucket, 0.5)
    assert taken == pytest.approx(1 + rate * 0.5, rel=0.02, abs=1)


async def test_fractional_rate_spaces_tokens() -> None:
    """At 4 per second, three tokens take half a second: the first is free, then 0.25 s each."""
    bucket = TokenBucket(4)
    start = anyio.current_time()
    for _ in range(3):
        assert await bucket.acquire()
    # Never early; late only by one wake-up (the machine may be busy), not by three.
    assert 0.5 - 0.002 <= anyio.current_time() - start < 0.6


async def test_rate_zero_is_idle_until_changed() -> None:
    """At rate 0 no token comes; raising the rate wakes the waiter at once."""
    bucket = TokenBucket(0)
    assert await _take_for(bucket, 0.3) == 0
    async with anyio.create_task_group() as tg:
        got = anyio.Event()

        async def take() -> None:
            await bucket.acquire()
            got.set()

        tg.start_soon(take)
        await anyio.sleep(0.05)
        start = anyio.current_time()
        bucket.set_rate(50)
        with anyio.fail_after(1):
            await got.wait()
    assert anyio.current_time() - start < 0.05


async def test_rate_change_cuts_a_long_wait_short() -> None:
    """A waiter due in ten seconds at 0.1/s gets its token soon after the rate becomes 100/s."""
    bucket = TokenBucket(0.1)
    assert await bucket.acquire()
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(bucket.acquire)
        await anyio.sleep(0.05)
        bucket.set_rate(100)
    assert anyio.current_time() - start < 0.1


async def test_saved_tokens_are_capped() -> None:
    """After an idle second at 100/s only a tenth of a second's worth comes at once."""
    bucket = TokenBucket(100, burst_s=0.1)
    await anyio.sleep(1)
    burst = await _take_for(bucket, 0.001)
    assert 9 <= burst <= 11


async def test_close_releases_waiters() -> None:
    """After close, a waiting and a new acquire both return False."""
    bucket = TokenBucket(0)
    results: list[bool] = []
    async with anyio.create_task_group() as tg:

        async def take() -> None:
            results.append(await bucket.acquire())

        tg.start_soon(take)
        await anyio.sleep(0.05)
        bucket.close()
    assert results == [False]
    assert not await bucket.acquire()


async def test_negative_rate_is_refused() -> None:
    """A negative rate is a caller bug, not a speed."""
    with pytest.raises(ValueError, match="negative"):
        TokenBucket(1).set_rate(-1)
