"""The fan-out's own CPU per delivery, in one process: `Fanout` and `FeedStream`, no HTTP.

`scripts/bench fanout` measures a delivery end to end (the api's CPU and the clients',
on the same cores); this isolates the part the relay owns: waking a stream, taking its
batch, the async generators, the heartbeat wait. Each of N streams is consumed by a task
that only counts its events; one event at a time is published and waited for until every
stream has it. Prints one JSON line: `{"streams", "events", "cpu_us_per_delivery"}`.

Usage: python -m bench.relay_cpu [STREAMS] [EVENTS]   (1000 200)
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import uvloop

from feedsvc.messages import Message
from feedsvc.relay.answers import ReplayFrom
from feedsvc.relay.changefeed import Row
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.stream import FeedStream

HEARTBEAT_S = 15.0
"""The api's default `FEED_HEARTBEAT_S`: every wait has this timeout, as in the api."""


def _row(n: int) -> Row:
    message = Message(uuid.uuid4(), "bench", f"message {n}", datetime.now(UTC))
    return Row(message=message, updated=f"{1_700_000_000_000_000_000 + n}.0000000000")


async def _no_history(limit: int) -> tuple[list[Message], str]:
    return [], ""


async def _no_replay(fanout: Fanout, answer: ReplayFrom) -> AsyncIterator[bytes]:
    raise AssertionError("every stream starts live")
    yield b""  # pragma: no cover


async def measure(streams: int, events: int) -> float:
    """CPU seconds per delivery of `events` events to `streams` streams."""
    fan = Fanout(4096, 1024)
    fan.publish(0, _row(0))  # the fanout decides exactly from its first event on
    delivered = 0
    everyone_has_it = asyncio.Event()
    target = 0

    async def consume() -> None:
        nonlocal delivered
        stream = FeedStream(
            fan, _no_replay, _no_history, last_event_id=None, limit=0, heartbeat_s=HEARTBEAT_S
        )
        async for chunk in stream.frames():
            delivered += chunk.count(b"event: message")
            if delivered >= target:
                everyone_has_it.set()

    tasks = [asyncio.create_task(consume()) for _ in range(streams)]
    while fan.subscribers < streams:  # noqa: ASYNC110 (the fanout's count; no event to wait on)
        await asyncio.sleep(0.01)
    began = time.process_time()
    for offset in range(1, events + 1):
        target = delivered + streams
        everyone_has_it.clear()
        fan.publish(offset, _row(offset))
        await everyone_has_it.wait()
    cpu = time.process_time() - began
    fan.close()
    await asyncio.gather(*tasks)
    return cpu / (streams * events)


def main(argv: list[str]) -> None:
    """Measure and print the JSON line."""
    streams = int(argv[0]) if argv else 1000
    events = int(argv[1]) if len(argv) > 1 else 200
    per_delivery = uvloop.run(measure(streams, events))
    line = {"streams": streams, "events": events, "cpu_us_per_delivery": per_delivery * 1e6}
    print(msgspec.json.encode(line).decode())


if __name__ == "__main__":
    main(sys.argv[1:])
