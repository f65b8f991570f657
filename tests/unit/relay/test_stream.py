"""One client's stream: history with its snapshot, resets with true reasons, busy replays."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio

from feedsvc.messages import Message
from feedsvc.relay.answers import ReplayFrom, Reset
from feedsvc.relay.changefeed import hlc_value
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.frames import PING, event_id, parse_event_id, retry_frame
from feedsvc.relay.reader import RECREATED
from feedsvc.relay.replay import ReplaysBusy
from feedsvc.relay.stream import BUSY, BUSY_RETRY_MS, RETRY_MS, FeedStream, History
from feedsvc.relay.subscription import Subscription
from tests.unit.relay.helpers import message, parse, row, texts


def _fanout(n: int) -> Fanout:
    fan = Fanout(100, 50)
    for i in range(n):
        fan.publish(i, row(i))
    return fan


def _history(upto: int) -> History:
    """A history loader: messages 0..upto-1 were visible, T is message upto-1's `updated`."""

    async def load(limit: int) -> tuple[list[Message], str]:
        newest_first = [message(i) for i in reversed(range(upto))][:limit]
        return newest_first, row(upto - 1).updated or ""

    return load


async def _no_replay(
    fanout: Fanout, answer: ReplayFrom
) -> AsyncIterator[bytes | Reset | Subscription]:
    raise AssertionError("no replay expected")
    yield b""  # pragma: no cover


async def _busy(fanout: Fanout, answer: ReplayFrom) -> AsyncIterator[bytes | Reset | Subscription]:
    raise ReplaysBusy
    yield b""  # pragma: no cover


def _split(chunks: list[bytes]) -> list[bytes]:
    """The frames in chunks that may hold several."""
    return [f + b"\n\n" for chunk in chunks for f in chunk.split(b"\n\n") if f]


async def _take(frames: AsyncIterator[bytes], count: int) -> list[bytes]:
    out: list[bytes] = []
    with anyio.fail_after(5):
        async for chunk in frames:
            out.append(chunk)
            if len(out) == count:
                break
    return out


async def test_history_carries_position_and_snapshot_and_live_skips_what_it_saw() -> None:
    """History ids are `P~T`; a row committed at or before T arriving later is sent id-only."""
    fan = _fanout(3)
    stream = FeedStream(fan, _no_replay, _history(5), last_event_id=None, limit=2, heartbeat_s=60)
    frames = stream.frames()
    retry, history = await _take(frames, 2)
    assert retry == retry_frame(RETRY_MS)
    events = parse(_split([history]))
    assert texts(_split([history])) == ["message 3", "message 4"]
    assert len({eid for eid, _, _ in events}) == 1, "every history event has the same id"
    position = parse_event_id(events[0][0])
    assert position is not None
    assert (position.offset, position.snapshot) == (2, hlc_value(row(4).updated or ""))
    fan.publish(3, row(3))  # committed before the read: history or older history
    fan.publish(4, row(4))
    fan.publish(5, row(5))
    [live] = await _take(frames, 1)
    assert texts(_split([live])) == ["message 5"]
    stream.close()
    assert fan.subscribers == 0


async def test_garbage_position_is_an_unknown_position_reset() -> None:
    """A Last-Event-ID that is not ours: `reset` saying so, then history."""
    stream = FeedStream(
        _fanout(3), _no_replay, _history(3), last_event_id="nonsense", limit=1, heartbeat_s=60
    )
    _, reset, history = await _take(stream.frames(), 3)
    [(_, event, data)] = parse([reset])
    assert event == "reset" and data is not None
    assert data["reason"].startswith("unknown position")
    assert texts(_split([history])) == ["message 2"]
    stream.close()


async def test_busy_replays_answer_a_retry_hint_and_end() -> None:
    """With every replay slot taken, an old position gets `retry:` and the stream ends."""
    fan = _fanout(300)
    stream = FeedStream(fan, _busy, _history(3), last_event_id="5", limit=0, heartbeat_s=60)
    got = [chunk async for chunk in stream.frames()]
    assert got == [retry_frame(RETRY_MS), *BUSY]
    assert retry_frame(BUSY_RETRY_MS) in got
    assert fan.subscribers == 0


async def test_restarted_fanout_resets_open_streams_with_the_reason() -> None:
    """When the topic is recreated under a stream: `reset` with that reason, then history."""
    fan = _fanout(3)
    stream = FeedStream(fan, _no_replay, _history(3), last_event_id=None, limit=1, heartbeat_s=60)
    frames = stream.frames()
    await _take(frames, 2)
    fan.restart(0, 0, RECREATED)
    reset, history = await _take(frames, 2)
    [(_, event, data)] = parse([reset])
    assert (event, data) == ("reset", {"reason": RECREATED})
    assert texts(_split([history])) == ["message 2"]
    stream.close()


async def test_idle_stream_sends_heartbeats() -> None:
    """Nothing to send for `heartbeat_s`: a comment ping."""
    stream = FeedStream(
        _fanout(1), _no_replay, _history(1), last_event_id=None, limit=0, heartbeat_s=0.05
    )
    _, ping = await _take(stream.frames(), 2)
    assert ping == PING
    stream.close()


GAP = "the changefeed restarted with a gap: test"


async def test_gap_marker_resets_open_streams_and_their_ids_move_past_it() -> None:
    """Setup's gap marker: every open stream gets `reset` and fresh history, with an id past
    the marker, so the client's next reconnect is not reset again."""
    fan = _fanout(3)
    stream = FeedStream(fan, _no_replay, _history(3), last_event_id=None, limit=1, heartbeat_s=60)
    frames = stream.frames()
    await _take(frames, 2)
    fan.gap(3, GAP)
    reset, history = await _take(frames, 2)
    [(reset_id, event, data)] = parse([reset])
    assert (event, data) == ("reset", {"reason": GAP})
    [(history_id, _, _)] = parse(_split([history]))
    for eid in (reset_id, history_id):
        position = parse_event_id(eid)
        assert position is not None and position.offset >= 3, eid
    fan.publish(4, row(4))
    [live] = await _take(frames, 1)
    assert texts(_split([live])) == ["message 4"]
    stream.close()
    again = fan.subscribe(history_id)
    assert isinstance(again, Subscription), again
    again.close()


async def test_positions_before_a_gap_marker_are_reset_with_its_reason() -> None:
    """A resume from before the marker would skip what the changefeed missed: `reset`."""
    fan = _fanout(3)
    fan.gap(3, GAP)
    fan.publish(4, row(4))
    for before in ("1", event_id(2, message(2).id)):
        assert fan.subscribe(before) == Reset(GAP), before
    after = fan.subscribe(event_id(4, message(4).id))
    assert isinstance(after, Subscription)
    after.close()


async def test_sampled_live_deliveries_are_timed_from_their_read_once_written() -> None:
    """Events 0 and 16 of 20 are sampled: two delays, told once the chunk is written."""
    fan = _fanout(0)
    delays: list[float] = []
    stream = FeedStream(
        fan,
        _no_replay,
        _history(0),
        last_event_id=None,
        limit=0,
        heartbeat_s=0.05,
        on_delivered=delays.append,
    )
    frames = stream.frames()
    assert (await _take(frames, 2))[1] == PING  # subscribed, idle
    read_at = time.monotonic() - 0.5
    for i in range(20):
        fan.publish(i, row(i), read_at)
    [live] = await _take(frames, 1)
    assert len(_split([live])) == 20
    assert delays == [], "not written yet: the server has not asked for the next chunk"
    assert await _take(frames, 1) == [PING]
    assert len(delays) == 2
    assert all(0.5 <= d < 5 for d in delays), delays
    stream.close()


async def test_resets_and_resumes_are_told_with_their_reason() -> None:
    """A garbage position is a reset (unknown position); shutting down is a resume."""
    fan = _fanout(3)
    notices: list[tuple[str, str]] = []
    stream = FeedStream(
        fan,
        _no_replay,
        _history(3),
        last_event_id="garbage",
        limit=0,
        heartbeat_s=0.05,
        on_notice=lambda kind, reason: notices.append((kind, reason)),
    )
    frames = stream.frames()
    assert (await _take(frames, 3))[2] == PING  # the retry hint, the reset, live and idle
    fan.close()
    with anyio.fail_after(5):
        rest = [chunk async for chunk in frames]
    assert b"event: resume" in b"".join(rest)
    assert [kind for kind, _ in notices] == ["reset", "resume"]
    assert "unknown position" in notices[0][1]
