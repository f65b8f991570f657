"""The fan-out: dedupe, ring resume, lagging subscribers, the history handoff."""

from __future__ import annotations

import asyncio

import pytest

from feedsvc.relay.changefeed import Delete, hlc_value
from feedsvc.relay.fanout import (
    TIMEOUT_TICKS,
    WAKE_BATCH,
    Ahead,
    Fanout,
    ReplayFrom,
    Reset,
    Subscription,
)
from feedsvc.relay.frames import EventId, event_id
from tests.unit.relay.helpers import batches, message, next_frames, parse, row, texts


def _sub(answer: object) -> Subscription:
    assert isinstance(answer, Subscription), answer
    return answer


def _fanout(n: int, ring_size: int = 100, buffer_size: int = 50) -> Fanout:
    """A fanout that has published messages 0..n-1 at offsets 0..n-1."""
    fan = Fanout(ring_size, buffer_size)
    for i in range(n):
        fan.publish(i, row(i))
    return fan


def test_every_subscriber_gets_the_same_bytes_object() -> None:
    """A frame is encoded once: all subscribers receive the identical object."""
    fan = _fanout(0)
    subs = [_sub(fan.subscribe(None)) for _ in range(3)]
    fan.publish(0, row(0))
    fan.publish(1, row(1))
    batches = [sub.take() for sub in subs]
    assert texts(batches[0]) == ["message 0", "message 1"]
    for batch in batches[1:]:
        assert all(a is b for a, b in zip(batch, batches[0], strict=True))


def test_live_ids_carry_offset_and_tag() -> None:
    """A live event's id is `<offset>-<first 8 hex of the message id>`."""
    fan = _fanout(0)
    sub = _sub(fan.subscribe(None))
    fan.advance(0)  # a resolved record
    fan.publish(1, row(7))
    [(eid, event, data)] = parse(sub.take())
    assert (eid, event) == (f"1-{message(7).id.hex[:8]}", "message")
    assert data == {
        "id": str(message(7).id),
        "author": "ann",
        "text": "message 7",
        "created_at": "2024-01-01T00:00:07Z",
    }
    assert sub.last_id == eid


def test_duplicates_are_dropped_even_far_apart() -> None:
    """A changefeed duplicate within the dedupe window never reaches a subscriber."""
    fan = _fanout(0, ring_size=100)
    sub = _sub(fan.subscribe(None))
    assert fan.publish(0, row(0))
    got: list[str] = []
    for i in range(1, 150):
        fan.publish(i, row(i))
        got += texts(sub.take())
    assert not fan.publish(150, row(0))  # 150 offsets later, window is 200
    assert fan.publish(151, row(151))
    got += texts(sub.take())
    assert got == [f"message {i}" for i in [*range(150), 151]]


def test_dedupe_forgets_beyond_its_window() -> None:
    """Memory is bounded: a repeat further back than the window is delivered again."""
    fan = Fanout(4, 2, dedupe_window=4)
    fan.publish(0, row(0))
    assert not fan.publish(3, row(0))
    assert fan.publish(8, row(0))


def test_delete_is_its_own_event() -> None:
    """A delete of a delivered message is delivered once; its duplicate is dropped."""
    fan = _fanout(1)
    sub = _sub(fan.subscribe(None))
    assert fan.publish(1, Delete(id=message(0).id, updated=None))
    assert not fan.publish(2, Delete(id=message(0).id, updated=None))
    [(eid, event, data)] = parse(sub.take())
    assert (eid, event, data) == (event_id(1, message(0).id), "delete", {"id": str(message(0).id)})


def test_resume_from_the_ring() -> None:
    """An id within the ring resumes with exactly the frames after it."""
    fan = _fanout(10)
    sub = _sub(fan.subscribe(event_id(6, message(6).id)))
    assert texts(sub.take()) == ["message 7", "message 8", "message 9"]
    fan.publish(10, row(10))
    assert texts(sub.take()) == ["message 10"]


def test_resume_without_tag_skips_the_check() -> None:
    """A bare offset resumes after that offset."""
    fan = _fanout(10)
    assert texts(_sub(fan.subscribe("8")).take()) == ["message 9"]
    assert _sub(fan.subscribe("9")).take() == []


def test_resume_at_the_newest_event_waits_for_new_ones() -> None:
    """Resuming from the last event gives nothing until something new is published."""
    fan = _fanout(3)
    sub = _sub(fan.subscribe(event_id(2, message(2).id)))
    assert sub.take() == []
    fan.publish(3, row(3))
    assert texts(sub.take()) == ["message 3"]


def test_tag_mismatch_is_a_reset() -> None:
    """An id whose offset holds another message (a recreated topic) is answered `Reset`."""
    fan = _fanout(10)
    assert isinstance(fan.subscribe(event_id(5, message(99).id)), Reset)


def test_tagged_id_at_a_non_event_offset_is_a_reset() -> None:
    """A tagged id naming an offset where no event was delivered cannot be ours."""
    fan = _fanout(3)
    fan.advance(3)
    fan.publish(4, row(4))
    assert isinstance(fan.subscribe(event_id(3, message(3).id)), Reset)


def test_offset_beyond_the_head_is_ahead() -> None:
    """A position this process has not reached yet is `Ahead`, not served."""
    fan = _fanout(10)
    assert fan.subscribe(event_id(10, message(10).id)) == Ahead(10)
    assert fan.subscribe("500") == Ahead(500)


def test_foreign_id_is_a_reset() -> None:
    """A Last-Event-ID that is not ours is answered `Reset`."""
    assert isinstance(_fanout(3).subscribe("hello"), Reset)


def test_older_than_the_ring_needs_a_replay() -> None:
    """An id before the ring's oldest event is to be replayed from Kafka."""
    fan = _fanout(30, ring_size=10, buffer_size=5)
    assert fan.floor == 20
    assert fan.subscribe(event_id(19, message(19).id)) == ReplayFrom(
        EventId(19, message(19).id.hex[:8])
    )
    assert fan.subscribe("18") == ReplayFrom(EventId(18, None))
    # Offset 19 untagged: everything after it is in the ring.
    assert texts(_sub(fan.subscribe("19")).take())[0] == "message 20"
    assert texts(_sub(fan.subscribe(event_id(20, message(20).id))).take())[0] == "message 21"


def test_ring_keeps_working_after_compaction() -> None:
    """Long runs compact the log; cursors and resumes stay exact."""
    fan = _fanout(0, ring_size=10, buffer_size=10)
    sub = _sub(fan.subscribe(None))
    got: list[str] = []
    for i in range(1000):
        fan.publish(i, row(i))
        if i % 7 == 0:
            got += texts(sub.take())
    got += texts(sub.take())
    assert got == [f"message {i}" for i in range(1000)]
    assert fan.floor == 990
    assert texts(_sub(fan.subscribe(event_id(995, message(995).id))).take()) == [
        f"message {i}" for i in range(996, 1000)
    ]


def test_new_subscription_position_names_the_newest_event() -> None:
    """History sent with a new subscription carries the id of the newest event."""
    assert _sub(_fanout(0).subscribe(None)).last_id == "-1"
    fan = _fanout(5)
    fan.advance(5)
    sub = _sub(fan.subscribe(None))
    assert sub.last_id == event_id(4, message(4).id)
    assert sub.take() == []
    # Reconnecting with it resumes with exactly what came after.
    fan.publish(6, row(6))
    assert texts(_sub(fan.subscribe(sub.last_id)).take()) == ["message 6"]


def test_slow_subscriber_is_told_to_resume_and_dropped() -> None:
    """A subscriber more than buffer_size behind gets one `resume` frame and ends."""
    fan = _fanout(0, ring_size=100, buffer_size=4)
    slow, fast = _sub(fan.subscribe(None)), _sub(fan.subscribe(None))
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
    assert texts(_sub(fan.subscribe(eid)).take()) == [f"message {i}" for i in range(1, 10)]


def test_buffer_full_but_not_over_is_not_lagging() -> None:
    """Exactly buffer_size pending frames are still delivered."""
    fan = _fanout(0, ring_size=10, buffer_size=4)
    sub = _sub(fan.subscribe(None))
    for i in range(4):
        fan.publish(i, row(i))
    assert len(texts(sub.take())) == 4
    assert not sub.ended


def test_resume_backlog_does_not_count_as_lag() -> None:
    """A resume may start with more than buffer_size frames from the ring."""
    fan = _fanout(50, ring_size=100, buffer_size=4)
    sub = _sub(fan.subscribe("9"))
    fan.publish(50, row(50))
    assert len(texts(sub.take())) == 41


def test_snapshot_sends_only_ids_of_rows_the_history_read_saw() -> None:
    """Rows at or before the history's snapshot T become id-only frames; ids carry T."""
    fan = _fanout(3)
    sub = _sub(fan.subscribe(None))
    other = _sub(fan.subscribe(None))
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
    fan = _fanout(3)
    sub = _sub(fan.subscribe(None))
    other = _sub(fan.subscribe(None))
    sub.start_snapshot(hlc_value(row(3).updated or ""))
    fan.resolve(3, row(3).updated or "")
    fan.publish(4, row(4))
    frames = sub.take()
    assert frames[0] is other.take()[0]
    assert sub.last_id == event_id(4, message(4).id) and sub.snapshot is None


def test_resume_from_a_snapshot_id_filters_the_same_way() -> None:
    """A resume from a history id drops what the first connection dropped."""
    fan = _fanout(3)
    first = _sub(fan.subscribe(None))
    history_id = first.start_snapshot(hlc_value(row(4).updated or ""))
    for i in (3, 4, 5):
        fan.publish(i, row(i))
    again = _sub(fan.subscribe(history_id))
    assert texts(again.take()) == texts(first.take()) == ["message 5"]


def test_warm_up_answers_ahead_until_the_end_offset_and_a_resolved() -> None:
    """Nobody is served before the end offset seen at start is consumed and a resolved read."""
    fan = Fanout(10, 5, low=0, high=100, dedupe_window=20)
    assert fan.start_offset == 70  # ring and dedupe window before the end
    assert fan.subscribe(None) == Ahead(99)
    for i in range(70, 99):
        fan.publish(i, row(i))
    fan.advance(99)
    assert fan.subscribe(None) == Ahead(99), "no resolved yet: decisions not exact"
    fan.resolve(100, row(0).updated or "")
    assert isinstance(fan.subscribe(None), Subscription)
    # Frames before a whole dedupe window and a resolved were seen are not in the ring.
    assert fan.floor == 101
    assert fan.subscribe("99") == ReplayFrom(EventId(99, None))


def test_publish_out_of_order_is_refused() -> None:
    """The consumer must publish in offset order."""
    fan = _fanout(3)
    with pytest.raises(ValueError, match="behind the head"):
        fan.publish(1, row(9))


def test_buffer_must_fit_in_the_ring() -> None:
    """A subscriber's backlog lives in the ring, so the ring cannot be smaller."""
    with pytest.raises(ValueError, match="buffer_size"):
        Fanout(4, 5)


async def test_a_waiting_subscriber_gets_one_batch() -> None:
    """A waiting subscriber wakes with every frame published meanwhile, in one batch."""
    fan = _fanout(0)
    sub = _sub(fan.subscribe(None))
    waiting = asyncio.ensure_future(next_frames(sub))
    await asyncio.sleep(0)
    assert not waiting.done()
    fan.publish(0, row(0))
    fan.publish(1, row(1))
    assert texts(await waiting) == ["message 0", "message 1"]


async def test_close_ends_the_stream() -> None:
    """Closing a subscription ends its stream (an empty batch) and removes it."""
    fan = _fanout(0)
    sub = _sub(fan.subscribe(None))
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


async def test_fanout_close_drains_then_ends() -> None:
    """At shutdown every subscription gets its pending frames, then ends."""
    fan = _fanout(0)
    sub = _sub(fan.subscribe(None))
    fan.publish(0, row(0))
    fan.close()
    assert texts(await next_frames(sub)) == ["message 0"]
    assert await next_frames(sub) == []


async def test_wait_past_returns_once_consumed() -> None:
    """`wait_past` returns when the record at that offset has been consumed."""
    fan = _fanout(0)
    waiter = asyncio.ensure_future(fan.wait_past(2))
    fan.publish(0, row(0))
    fan.advance(1)
    await asyncio.sleep(0)
    assert not waiter.done()
    fan.advance(2)
    await asyncio.wait_for(waiter, 1)


async def test_burst_while_waiting_is_not_lag_but_while_busy_is() -> None:
    """A burst bigger than the buffer cuts only subscribers that were busy, not waiting ones."""
    fan = _fanout(0, ring_size=100, buffer_size=4)
    ready, busy = _sub(fan.subscribe(None)), _sub(fan.subscribe(None))
    waiting = asyncio.ensure_future(next_frames(ready))
    await asyncio.sleep(0)
    for i in range(10):  # one relay batch, published without yielding
        fan.publish(i, row(i))
    assert texts(await waiting) == [f"message {i}" for i in range(10)]
    assert not ready.ended
    assert parse(busy.take())[0][1] == "resume"
    assert fan.subscribers == 1


async def test_a_broadcast_leaves_turns_for_other_work() -> None:
    """Thousands of waiting streams are woken a batch per loop turn: work queued after the
    event (a post's next step) runs after the first batch, not after every stream; all
    still get the event, in the order they waited."""
    loop = asyncio.get_running_loop()
    fan = _fanout(0)
    count = 3 * WAKE_BATCH + 10
    got: list[int] = []

    async def stream(n: int) -> None:
        sub = _sub(fan.subscribe(None))
        assert texts(await next_frames(sub)) == ["message 0"]
        got.append(n)

    tasks = [asyncio.create_task(stream(n)) for n in range(count)]
    await asyncio.sleep(0)  # each subscribes and waits
    seen_by_other_work: list[int] = []
    fan.publish(0, row(0))
    loop.call_soon(lambda: seen_by_other_work.append(len(got)))
    await asyncio.gather(*tasks)
    assert seen_by_other_work == [WAKE_BATCH]
    assert got == list(range(count))


async def test_a_wait_times_out_in_its_last_part_never_later() -> None:
    """Waits with a timeout end False in the last 1/TIMEOUT_TICKS of it, each measured from
    its own start (waits begun at different times, on one clock); a woken one ends True."""
    loop = asyncio.get_running_loop()
    fan = _fanout(0)
    seconds = 0.8  # the clock ticks every 0.2 s

    async def timed() -> tuple[bool, float]:
        began = loop.time()
        woken = await fan.wait_changed(seconds)
        return woken, loop.time() - began

    first = asyncio.create_task(timed())
    await asyncio.sleep(0.25)  # a second wait, started just after one of the clock's ticks
    second = asyncio.create_task(timed())
    for woken, took in await asyncio.wait_for(asyncio.gather(first, second), 5):
        assert woken is False
        assert seconds * (1 - 1 / TIMEOUT_TICKS) - 0.02 <= took <= seconds + 0.1, took
    untimed = asyncio.create_task(fan.wait_changed(None))
    timed_but_woken = asyncio.create_task(fan.wait_changed(60))
    await asyncio.sleep(0)
    fan.publish(0, row(0))
    assert await untimed is True
    assert await timed_but_woken is True


async def test_waits_share_one_clock_and_time_out_a_batch_per_turn() -> None:
    """Thousands of heartbeat waits start no timer each, and the ones that time out together
    are ended `WAKE_BATCH` per loop turn, as a broadcast's are."""
    loop = asyncio.get_running_loop()
    fan = _fanout(0)
    count = 2 * WAKE_BATCH + 10
    timers = 0
    call_at = loop.call_at  # asyncio's call_later calls it too

    def counted(*args: object, **kwargs: object) -> asyncio.TimerHandle:
        nonlocal timers
        timers += 1
        return call_at(*args, **kwargs)  # type: ignore[arg-type]

    loop.call_at = counted  # type: ignore[method-assign]
    try:
        ended: list[int] = []

        seen_by_other_work: list[int] = []

        async def wait(n: int) -> None:
            assert await fan.wait_changed(0.2) is False
            if not ended:  # the first to end queues other work, as a post would
                loop.call_soon(lambda: seen_by_other_work.append(len(ended)))
            ended.append(n)

        tasks = [asyncio.create_task(wait(n)) for n in range(count)]
        await asyncio.sleep(0)
        assert timers == 1
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    finally:
        del loop.call_at
    assert seen_by_other_work == [WAKE_BATCH]
    assert ended == list(range(count))
