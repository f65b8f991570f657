"""The fan-out: dedupe, ring resume, answers to a position, warm-up, shutdown, broadcast."""

from __future__ import annotations

import asyncio

import pytest

from feedsvc.relay.answers import Ahead, ReplayFrom, Reset
from feedsvc.relay.changefeed import Delete
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.frames import EventId, event_id
from feedsvc.relay.subscription import Subscription
from feedsvc.relay.waits import WAKE_BATCH
from tests.unit.relay.helpers import (
    fanout_with,
    message,
    next_frames,
    parse,
    row,
    subscribed,
    texts,
)


def test_every_subscriber_gets_the_same_bytes_object() -> None:
    """A frame is encoded once: all subscribers receive the identical object."""
    fan = fanout_with(0)
    subs = [subscribed(fan.subscribe(None)) for _ in range(3)]
    fan.publish(0, row(0))
    fan.publish(1, row(1))
    batches = [sub.take() for sub in subs]
    assert texts(batches[0]) == ["message 0", "message 1"]
    for batch in batches[1:]:
        assert all(a is b for a, b in zip(batch, batches[0], strict=True))


def test_live_ids_carry_offset_and_tag() -> None:
    """A live event's id is `<offset>-<first 8 hex of the message id>`."""
    fan = fanout_with(0)
    sub = subscribed(fan.subscribe(None))
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
    fan = fanout_with(0, ring_size=100)
    sub = subscribed(fan.subscribe(None))
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
    fan = fanout_with(1)
    sub = subscribed(fan.subscribe(None))
    assert fan.publish(1, Delete(id=message(0).id, updated=None))
    assert not fan.publish(2, Delete(id=message(0).id, updated=None))
    [(eid, event, data)] = parse(sub.take())
    assert (eid, event, data) == (event_id(1, message(0).id), "delete", {"id": str(message(0).id)})


def test_resume_from_the_ring() -> None:
    """An id within the ring resumes with exactly the frames after it."""
    fan = fanout_with(10)
    sub = subscribed(fan.subscribe(event_id(6, message(6).id)))
    assert texts(sub.take()) == ["message 7", "message 8", "message 9"]
    fan.publish(10, row(10))
    assert texts(sub.take()) == ["message 10"]


def test_resume_without_tag_skips_the_check() -> None:
    """A bare offset resumes after that offset."""
    fan = fanout_with(10)
    assert texts(subscribed(fan.subscribe("8")).take()) == ["message 9"]
    assert subscribed(fan.subscribe("9")).take() == []


def test_resume_at_the_newest_event_waits_for_new_ones() -> None:
    """Resuming from the last event gives nothing until something new is published."""
    fan = fanout_with(3)
    sub = subscribed(fan.subscribe(event_id(2, message(2).id)))
    assert sub.take() == []
    fan.publish(3, row(3))
    assert texts(sub.take()) == ["message 3"]


def test_tag_mismatch_is_a_reset() -> None:
    """An id whose offset holds another message (a recreated topic) is answered `Reset`."""
    fan = fanout_with(10)
    assert isinstance(fan.subscribe(event_id(5, message(99).id)), Reset)


def test_tagged_id_at_a_non_event_offset_is_a_reset() -> None:
    """A tagged id naming an offset where no event was delivered cannot be ours."""
    fan = fanout_with(3)
    fan.advance(3)
    fan.publish(4, row(4))
    assert isinstance(fan.subscribe(event_id(3, message(3).id)), Reset)


def test_offset_beyond_the_head_is_ahead() -> None:
    """A position this process has not reached yet is `Ahead`, not served."""
    fan = fanout_with(10)
    assert fan.subscribe(event_id(10, message(10).id)) == Ahead(10)
    assert fan.subscribe("500") == Ahead(500)


def test_foreign_id_is_a_reset() -> None:
    """A Last-Event-ID that is not ours is answered `Reset`."""
    assert isinstance(fanout_with(3).subscribe("hello"), Reset)


def test_older_than_the_ring_needs_a_replay() -> None:
    """An id before the ring's oldest event is to be replayed from Kafka."""
    fan = fanout_with(30, ring_size=10, buffer_size=5)
    assert fan.floor == 20
    assert fan.subscribe(event_id(19, message(19).id)) == ReplayFrom(
        EventId(19, message(19).id.hex[:8])
    )
    assert fan.subscribe("18") == ReplayFrom(EventId(18, None))
    # Offset 19 untagged: everything after it is in the ring.
    assert texts(subscribed(fan.subscribe("19")).take())[0] == "message 20"
    assert texts(subscribed(fan.subscribe(event_id(20, message(20).id))).take())[0] == "message 21"


def test_ring_keeps_working_after_compaction() -> None:
    """Long runs compact the log; cursors and resumes stay exact."""
    fan = fanout_with(0, ring_size=10, buffer_size=10)
    sub = subscribed(fan.subscribe(None))
    got: list[str] = []
    for i in range(1000):
        fan.publish(i, row(i))
        if i % 7 == 0:
            got += texts(sub.take())
    got += texts(sub.take())
    assert got == [f"message {i}" for i in range(1000)]
    assert fan.floor == 990
    assert texts(subscribed(fan.subscribe(event_id(995, message(995).id))).take()) == [
        f"message {i}" for i in range(996, 1000)
    ]


def test_new_subscription_position_names_the_newest_event() -> None:
    """History sent with a new subscription carries the id of the newest event."""
    assert subscribed(fanout_with(0).subscribe(None)).last_id == "-1"
    fan = fanout_with(5)
    fan.advance(5)
    sub = subscribed(fan.subscribe(None))
    assert sub.last_id == event_id(4, message(4).id)
    assert sub.take() == []
    # Reconnecting with it resumes with exactly what came after.
    fan.publish(6, row(6))
    assert texts(subscribed(fan.subscribe(sub.last_id)).take()) == ["message 6"]


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
    fan = fanout_with(3)
    with pytest.raises(ValueError, match="behind the head"):
        fan.publish(1, row(9))


def test_buffer_must_fit_in_the_ring() -> None:
    """A subscriber's backlog lives in the ring, so the ring cannot be smaller."""
    with pytest.raises(ValueError, match="buffer_size"):
        Fanout(4, 5)


async def test_fanout_close_drains_then_ends() -> None:
    """At shutdown every subscription gets its pending frames, then ends."""
    fan = fanout_with(0)
    sub = subscribed(fan.subscribe(None))
    fan.publish(0, row(0))
    fan.close()
    assert texts(await next_frames(sub)) == ["message 0"]
    assert await next_frames(sub) == []


async def test_wait_past_returns_once_consumed() -> None:
    """`wait_past` returns when the record at that offset has been consumed."""
    fan = fanout_with(0)
    waiter = asyncio.ensure_future(fan.wait_past(2))
    fan.publish(0, row(0))
    fan.advance(1)
    await asyncio.sleep(0)
    assert not waiter.done()
    fan.advance(2)
    await asyncio.wait_for(waiter, 1)


async def test_a_broadcast_leaves_turns_for_other_work() -> None:
    """Thousands of waiting streams are woken a batch per loop turn: work queued after the
    event (a post's next step) runs after the first batch, not after every stream; all
    still get the event, in the order they waited."""
    loop = asyncio.get_running_loop()
    fan = fanout_with(0)
    count = 3 * WAKE_BATCH + 10
    got: list[int] = []

    async def stream(n: int) -> None:
        sub = subscribed(fan.subscribe(None))
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
