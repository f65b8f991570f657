"""Subscriptions: batches from the shared log, lag cuts, snapshots, and leaving."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from feedsvc.relay.changefeed import hlc_value
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.frames import EventId, event_id
from feedsvc.relay.subscription import Subscription
from feedsvc.relay.waits import WAKE_BATCH
from tests.unit.relay.fakes import FakeClock
from tests.unit.relay.helpers import (
    batches,
    fanout_with,
    message,
    next_frames,
    parse,
    row,
    subscribed,
    texts,
)


def test_slow_subscriber_is_told_to_resume_and_dropped() -> None:
    """A subscriber more than buffer_size behind gets one `resume` frame and ends."""
    fan = fanout_with(0, ring_size=100, buffer_size=4)
    slow, fast = subscribed(fan.subscribe(None)), subscribed(fan.subscribe(None))
    lagged: list[bool] = []
    slow.on_lag = lambda: lagged.append(True)
    fan.publish(0, row(0))
    assert texts(slow.take()) == ["message 0"]
    assert texts(fast.take()) == ["message 0"]
    got: list[str] = []
    for i in range(1, 10):
        fan.publish(i, row(i))
        got += texts(fast.take())
    assert got == [f"message {i}" for i in range(1, 10)]
    assert lagged == [True]  # noticed by the sweep, before the slow one came back
    assert fan.subscribers == 1
    [(eid, event, data)] = parse(slow.take())
    assert (eid, event) == (event_id(0, message(0).id), "resume")
    assert data == {"last_event_id": eid, "reason": "the client fell behind; reconnect to resume"}
    assert slow.ended
    assert slow.take() == []
    # The resume position is exact.
    assert texts(subscribed(fan.subscribe(eid)).take()) == [f"message {i}" for i in range(1, 10)]


def test_buffer_full_but_not_over_is_not_lagging() -> None:
    """Exactly buffer_size pending frames are still delivered."""
    fan = fanout_with(0, ring_size=10, buffer_size=4)
    sub = subscribed(fan.subscribe(None))
    for i in range(4):
        fan.publish(i, row(i))
    assert len(texts(sub.take())) == 4
    assert not sub.ended


def test_resume_backlog_does_not_count_as_lag() -> None:
    """A resume may start with more than buffer_size frames from the ring."""
    fan = fanout_with(50, ring_size=100, buffer_size=4)
    sub = subscribed(fan.subscribe("9"))
    fan.publish(50, row(50))
    assert len(texts(sub.take())) == 41


def test_snapshot_sends_only_ids_of_rows_the_history_read_saw() -> None:
    """Rows at or before the history's snapshot T become id-only frames; ids carry T."""
    fan = fanout_with(3)
    sub = subscribed(fan.subscribe(None))
    other = subscribed(fan.subscribe(None))
    t = hlc_value(row(3).updated or "")
    history_id = sub.start_snapshot(t)
    assert history_id == str(EventId(2, message(2).id.hex[:8], t))
    fan.publish(3, row(3))  # committed at T: in the history (or older history)
    fan.publish(4, row(4))
    frames = sub.take()
    [(first, event, _), (second, _, _)] = parse(frames)
    assert (first, event) == (str(EventId(3, message(3).id.hex[:8], t)), None)
    assert second == str(EventId(4, message(4).id.hex[:8], t))
    assert texts(frames) == ["message 4"]
    assert texts(other.take()) == ["message 3", "message 4"]
    assert sub.last_id == second


def test_snapshot_ends_at_a_resolved_past_it() -> None:
    """Once a resolved >= T is read, frames are the shared bytes with plain ids again."""
    fan = fanout_with(3)
    sub = subscribed(fan.subscribe(None))
    other = subscribed(fan.subscribe(None))
    sub.start_snapshot(hlc_value(row(3).updated or ""))
    fan.resolve(3, row(3).updated or "")
    fan.publish(4, row(4))
    frames = sub.take()
    assert frames[0] is other.take()[0]
    assert sub.last_id == event_id(4, message(4).id) and sub.snapshot is None


def test_resume_from_a_snapshot_id_filters_the_same_way() -> None:
    """A resume from a history id drops what the first connection dropped."""
    fan = fanout_with(3)
    first = subscribed(fan.subscribe(None))
    history_id = first.start_snapshot(hlc_value(row(4).updated or ""))
    for i in (3, 4, 5):
        fan.publish(i, row(i))
    again = subscribed(fan.subscribe(history_id))
    assert texts(again.take()) == texts(first.take()) == ["message 5"]


async def test_a_waiting_subscriber_gets_one_batch() -> None:
    """A waiting subscriber wakes with every frame published meanwhile, in one batch."""
    fan = fanout_with(0)
    sub = subscribed(fan.subscribe(None))
    waiting = asyncio.ensure_future(next_frames(sub))
    await asyncio.sleep(0)
    assert not waiting.done()
    fan.publish(0, row(0))
    fan.publish(1, row(1))
    assert texts(await waiting) == ["message 0", "message 1"]


async def test_close_ends_the_stream() -> None:
    """Closing a subscription ends its stream (an empty batch) and removes it."""
    fan = fanout_with(0)
    sub = subscribed(fan.subscribe(None))
    got: list[str] = []

    async def read() -> None:
        async for batch in batches(sub):
            got.extend(texts(batch))

    reader = asyncio.ensure_future(read())
    fan.publish(0, row(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    sub.close()
    await asyncio.wait_for(reader, 1)
    assert got == ["message 0"]
    assert fan.subscribers == 0


async def test_burst_while_waiting_is_not_lag_but_while_busy_is() -> None:
    """A burst bigger than the buffer cuts only subscribers that were busy, not waiting ones."""
    fan = fanout_with(0, ring_size=100, buffer_size=4)
    ready, busy = subscribed(fan.subscribe(None)), subscribed(fan.subscribe(None))
    waiting = asyncio.ensure_future(next_frames(ready))
    await asyncio.sleep(0)
    for i in range(10):  # one relay batch, published without yielding
        fan.publish(i, row(i))
    assert texts(await waiting) == [f"message {i}" for i in range(10)]
    assert not ready.ended
    assert parse(busy.take())[0][1] == "resume"
    assert fan.subscribers == 1


async def _waiting_streams(fan: Fanout, count: int, takes: list[int]) -> list[asyncio.Task[object]]:
    """`count` streams waiting for frames, each `take` of theirs counted in `takes`."""

    def counting(sub: Subscription) -> Subscription:
        take = sub.take

        def counted() -> list[bytes]:
            takes.append(1)
            return take()

        sub.take = counted  # type: ignore[method-assign]
        return sub

    subs = [counting(subscribed(fan.subscribe(None))) for _ in range(count)]
    tasks: list[asyncio.Task[object]] = [
        asyncio.create_task(sub.next_frames_within(None)) for sub in subs
    ]
    await asyncio.sleep(0)
    return tasks


async def _stop(tasks: Sequence[asyncio.Task[object]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_leave_wakes_no_waiting_stream() -> None:
    """A stream that leaves the fanout makes no other waiting stream take again."""
    fan = fanout_with(0)
    takes: list[int] = []
    leaver = subscribed(fan.subscribe(None))
    tasks = await _waiting_streams(fan, 3, takes)
    before = len(takes)
    leaver.close()
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(takes) == before
    await _stop(tasks)


async def test_a_join_wakes_no_waiting_stream() -> None:
    """A stream that joins the fanout and waits makes no other waiting stream take again."""
    fan = fanout_with(0)
    takes: list[int] = []
    tasks = await _waiting_streams(fan, 3, takes)
    before = len(takes)
    joiner = subscribed(fan.subscribe(None))
    tasks.append(asyncio.create_task(joiner.next_frames_within(15)))
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(takes) == before
    await _stop(tasks)


async def _callbacks_of_a_leave(waiting: int) -> int:
    """Loop callbacks scheduled in the turns after a stream leaves while `waiting` wait (as
    many turns as waking 2,000 a batch a turn takes)."""
    loop = asyncio.get_running_loop()
    fan = fanout_with(0)
    tasks = [
        asyncio.create_task(subscribed(fan.subscribe(None)).next_frames_within(None))
        for _ in range(waiting)
    ]
    leaver = subscribed(fan.subscribe(None))
    await asyncio.sleep(0)
    calls = 0
    call_soon = loop.call_soon

    def counted(*args: object, **kwargs: object) -> asyncio.Handle:
        nonlocal calls
        calls += 1
        return call_soon(*args, **kwargs)  # type: ignore[arg-type]

    loop.call_soon = counted  # type: ignore[method-assign]
    try:
        leaver.close()
        for _ in range(2 + 2_000 // WAKE_BATCH):
            await asyncio.sleep(0)
    finally:
        del loop.call_soon
    await _stop(tasks)
    return calls


async def test_the_work_of_a_leave_does_not_grow_with_the_streams_open() -> None:
    """A leave schedules as much work with 2,000 streams waiting as with 10."""
    assert await _callbacks_of_a_leave(2_000) == await _callbacks_of_a_leave(10)


async def test_a_restart_ends_the_waiting_streams_a_batch_per_turn() -> None:
    """A restart ends every waiting stream, `WAKE_BATCH` per loop turn as a broadcast does,
    though each stream is closed at once."""
    loop = asyncio.get_running_loop()
    fan = fanout_with(0)
    count = 2 * WAKE_BATCH + 10
    ended: list[int] = []

    async def stream(n: int) -> None:
        sub = subscribed(fan.subscribe(None))
        assert await next_frames(sub) == []
        assert sub.reset_reason == "the topic was recreated"
        ended.append(n)

    tasks = [asyncio.create_task(stream(n)) for n in range(count)]
    await asyncio.sleep(0)
    seen_by_other_work: list[int] = []
    fan.restart(0, 0, "the topic was recreated")
    loop.call_soon(lambda: seen_by_other_work.append(len(ended)))
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert seen_by_other_work == [WAKE_BATCH]
    assert sorted(ended) == list(range(count))


async def test_nothing_within_the_seconds_is_none_on_the_fanouts_clock() -> None:
    """A wait for frames ends None once its seconds have passed on the fanout's clock."""
    clock = FakeClock()
    fan = Fanout(100, 50, clock=clock)
    sub = subscribed(fan.subscribe(None))
    waiting = asyncio.create_task(sub.next_frames_within(15))
    await asyncio.sleep(0)
    clock.advance(14)
    await asyncio.sleep(0)
    assert not waiting.done()
    clock.advance(1)
    assert await waiting is None
