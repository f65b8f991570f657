"""The waits for the fan-out's next change and their one clock, on a fake clock."""

from __future__ import annotations

import asyncio

from feedsvc.relay.waits import TIMEOUT_TICKS, WAKE_BATCH, Waits
from tests.unit.relay.fakes import FakeClock


async def _turns(n: int) -> None:
    """Let the event loop run `n` turns (woken tasks take their step)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_wait_times_out_in_its_last_part_never_later() -> None:
    """Waits with a timeout end False in the last 1/TIMEOUT_TICKS of it, each measured from
    its own start, though one clock ends them both."""
    clock = FakeClock()
    waits = Waits(clock)
    seconds = 0.8
    ended: dict[str, tuple[bool, float]] = {}

    async def timed(name: str) -> None:
        began = clock.time()
        woken = await waits.wait(seconds)
        ended[name] = (woken, clock.time() - began)

    first = asyncio.create_task(timed("first"))
    await _turns(1)
    clock.advance(0.25)  # the second starts between the first's start and its end
    second = asyncio.create_task(timed("second"))
    await _turns(1)
    while len(ended) < 2 and clock.time() < 2:
        clock.advance(0.01)
        await _turns(2)
    await asyncio.gather(first, second)
    for woken, took in ended.values():
        assert woken is False
        assert seconds * (1 - 1 / TIMEOUT_TICKS) <= took <= seconds + 0.01, took


async def test_a_woken_wait_ends_true() -> None:
    """`wake_all` ends every wait, with or without a timeout, True."""
    waits = Waits(FakeClock())
    untimed = asyncio.create_task(waits.wait(None))
    timed = asyncio.create_task(waits.wait(60))
    await _turns(1)
    waits.wake_all()
    assert await untimed is True
    assert await timed is True
    assert len(waits) == 0


async def test_waits_share_one_clock_and_time_out_a_batch_per_turn() -> None:
    """Thousands of waits set one timer, and the ones that time out together are ended
    `WAKE_BATCH` per loop turn, as a broadcast's are."""
    loop = asyncio.get_running_loop()
    clock = FakeClock()
    waits = Waits(clock)
    count = 2 * WAKE_BATCH + 10
    ended: list[int] = []
    seen_by_other_work: list[int] = []

    async def wait(n: int) -> None:
        assert await waits.wait(0.2) is False
        if not ended:  # the first to end queues other work, as a post would
            loop.call_soon(lambda: seen_by_other_work.append(len(ended)))
        ended.append(n)

    tasks = [asyncio.create_task(wait(n)) for n in range(count)]
    await _turns(1)
    assert len(clock.timers) == 1
    clock.advance(0.2)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert seen_by_other_work == [WAKE_BATCH]
    assert ended == list(range(count))


async def test_waking_one_wait_leaves_the_others_waiting() -> None:
    """`wake` ends the one wait it is given; the others go on waiting."""
    waits = Waits(FakeClock())
    woken = waits.start(None)
    others = [waits.start(30) for _ in range(3)]
    waits.wake(woken)
    await _turns(2)
    assert woken.result() is True
    assert not any(other.done() for other in others)
    assert len(waits) == 3
