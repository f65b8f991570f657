"""The SSE client's parser: chunked framing, opaque event ids, duplicates, notices."""

from __future__ import annotations

import asyncio
from typing import cast

from bench.fanout import figures
from bench.feedstream import FeedStream

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _message(eid: str, mid: str) -> bytes:
    data = b'{"id":"%s","author":"a","text":"id: not an id line","created_at":"x"}' % mid.encode()
    return b"id: %s\nevent: message\ndata: %s\n\n" % (eid.encode(), data)


class _Transport:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        pass


async def _stream() -> tuple[FeedStream, _Transport]:
    stream = FeedStream("127.0.0.1", 8000, "/feed?limit=0")
    transport = _Transport()
    stream.connection_made(cast(asyncio.Transport, transport))
    return stream, transport


async def test_messages_are_keyed_by_message_id_and_the_last_event_id_kept_verbatim() -> None:
    """Events split across reads are parsed whole; any id string is kept as it came."""
    stream, _ = await _stream()
    body = b"retry: 2000\n\n" + _message("7:opaque/1", "m1") + _message("v2.abc-9", "m2")
    wire = HEAD + _chunk(body[:30]) + _chunk(body[30:])
    for i in range(0, len(wire), 17):
        stream.data_received(wire[i : i + 17])
    assert stream.opened.done()
    assert set(stream.seen) == {b"m1", b"m2"}
    assert stream.last_id == "v2.abc-9"
    assert stream.duplicates == 0


async def test_a_message_read_twice_is_a_duplicate_and_resume_uses_the_last_id() -> None:
    """The second read of one message counts as a duplicate; a reconnect sends Last-Event-ID."""
    stream, transport = await _stream()
    assert b"Last-Event-ID" not in transport.written
    stream.data_received(HEAD + _chunk(_message("a", "m1") + _message("b", "m1")))
    stream.data_received(_chunk(b'id: c\nevent: resume\ndata: {"last_event_id":"c"}\n\n'))
    assert stream.duplicate_keys == [b"m1"]
    assert stream.resumes == 1
    assert b"Last-Event-ID: c\r\n" in stream.request()


def test_figures_count_missing_deliveries_and_rate_over_the_window() -> None:
    """Two streams, one message read by one of them: one missing, latency from the 202."""
    got = figures({"m1": 1.0, "m2": 2.0}, {"m1": [1.05, 1.1], "m2": [2.2]}, 2, 1.5)
    assert got["missing"] == 1
    assert got["deliveries_per_s"] == 2
    assert got["deliver_p99_ms"] == 200.0
