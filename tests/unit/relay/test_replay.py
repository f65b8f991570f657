"""Replaying a position older than the ring from Kafka records, then handing over."""

from __future__ import annotations

from feedsvc.relay.answers import ReplayFrom, Reset
from feedsvc.relay.changefeed import Delete, Gap, Row
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.frames import EventId, event_id
from feedsvc.relay.replay import Replay
from feedsvc.relay.subscription import Subscription
from tests.unit.relay.helpers import message, row, texts


def _topic(n: int) -> list[Row | Delete | None]:
    """Messages 0..n-1 at offsets 0..n-1, with message 3 sent again at offset n."""
    return [*(row(i) for i in range(n)), row(3)]


def _fanout(records: list[Row | Delete | None], ring_size: int = 4) -> Fanout:
    fan = Fanout(ring_size, 1, dedupe_window=100)
    for offset, record in enumerate(records):
        if record is None:
            fan.advance(offset)
        else:
            fan.publish(offset, record)
    return fan


def _replay(fan: Fanout, records: list[Row | Delete | None], after: str) -> list[bytes]:
    """Run the replay protocol over `records`; everything the client gets."""
    answer = fan.subscribe(after)
    assert isinstance(answer, ReplayFrom)
    replay = Replay(fan, answer.after)
    seek = replay.start(0)
    assert isinstance(seek, int)
    frames: list[bytes] = []
    for offset in range(seek, len(records) + 1):
        sub = replay.handover(offset)
        if isinstance(sub, Subscription):
            return frames + sub.take()
        out = replay.feed(offset, records[offset])
        assert isinstance(out, bytes | None)
        if out is not None:
            frames.append(out)
    raise AssertionError("no handover")


def test_replay_then_ring_gives_every_missed_message_once() -> None:
    """From an old position: Kafka records below the ring, then the ring, no gap, no repeat."""
    records = _topic(20)
    fan = _fanout(records)
    frames = _replay(fan, records, event_id(5, message(5).id))
    assert texts(frames) == [f"message {i}" for i in range(6, 20)]


def test_replayed_frames_are_the_live_bytes() -> None:
    """A replayed frame is byte for byte what live subscribers got."""
    records: list[Row | Delete | None] = [row(i) for i in range(10)]
    fan = Fanout(10, 10)
    live = fan.subscribe(None)
    assert isinstance(live, Subscription)
    for offset, record in enumerate(records):
        assert record is not None
        fan.publish(offset, record)
    replay = Replay(fan, EventId(-1, None))
    replayed = [replay.feed(offset, record) for offset, record in enumerate(records)]
    assert replayed == live.take()


def test_duplicates_before_the_position_are_still_dropped() -> None:
    """A duplicate of a message sent before the position is not sent again."""
    records = _topic(20)  # message 3 again at offset 20
    fan = _fanout(records, ring_size=1)
    frames = _replay(fan, records, event_id(10, message(10).id))
    assert texts(frames) == [f"message {i}" for i in range(11, 20)]


def test_tag_mismatch_found_in_kafka_is_a_reset() -> None:
    """If the record at the position is another message, the replay answers Reset."""
    records = _topic(20)
    replay = Replay(_fanout(records), EventId(5, message(6).id.hex[:8]))
    seek = replay.start(0)
    assert isinstance(seek, int)
    outs = [replay.feed(offset, records[offset]) for offset in range(seek, 6)]
    assert isinstance(outs[-1], Reset)


def test_position_at_a_resolved_record_with_tag_is_a_reset() -> None:
    """A tagged position where Kafka holds no event is not one of ours."""
    replay = Replay(_fanout(_topic(10)), EventId(0, message(0).id.hex[:8]))
    assert isinstance(replay.feed(0, None), Reset)


def test_retention_gap_is_a_reset() -> None:
    """When retention deleted records after the position, the gap is announced."""
    replay = Replay(_fanout(_topic(20)), EventId(5, None))
    assert isinstance(replay.start(7), Reset)
    assert replay.start(6) == 6  # the position itself is gone: nothing to check, no gap


def test_seek_reads_a_dedupe_window_before_the_position() -> None:
    """The replay starts a dedupe window early to drop what live readers dropped."""
    fan = Fanout(4, 2, dedupe_window=10)
    assert Replay(fan, EventId(50, None)).start(0) == 41
    assert Replay(fan, EventId(5, None)).start(0) == 0


def test_no_handover_before_the_ring() -> None:
    """The replay keeps reading until the ring covers the next offset."""
    records = _topic(20)
    fan = _fanout(records)
    replay = Replay(fan, EventId(5, None))
    assert replay.handover(fan.floor - 1) is None
    assert isinstance(replay.handover(fan.floor), Subscription)


def test_replay_that_crosses_a_gap_marker_ends_with_its_reset() -> None:
    """Kafka holds setup's gap marker after the position: the frames before it, then `reset`."""
    records: list[Row | Delete | None] = [row(i) for i in range(20)]
    fan = _fanout(records)
    answer = fan.subscribe(event_id(5, message(5).id))
    assert isinstance(answer, ReplayFrom)
    replay = Replay(fan, answer.after)
    assert replay.start(0) == 0
    for offset in range(8):
        replay.feed(offset, records[offset])
    assert replay.feed(8, Gap("the changefeed restarted with a gap: test")) == Reset(
        "the changefeed restarted with a gap: test"
    )


def test_replay_past_a_gap_marker_ignores_it() -> None:
    """A position after the marker is not affected by it."""
    records: list[Row | Delete | None] = [row(i) for i in range(20)]
    fan = _fanout(records)
    answer = fan.subscribe(event_id(5, message(5).id))
    assert isinstance(answer, ReplayFrom)
    replay = Replay(fan, answer.after)
    replay.start(0)
    assert replay.feed(3, Gap("the changefeed restarted with a gap: test")) is None
