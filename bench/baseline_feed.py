"""The feed benchmark's baseline: a bare Litestar `Stream` fan-out of pre-encoded frames.

Every `GET /feed` gets an asyncio queue of its own and a `Stream` that writes whatever the
queue holds; `POST /broadcast?rate=R&seconds=S` then encodes one frame shaped like the
feed's (`id:`, `event: message`, `data:` the message JSON, of the bench's size) R times a
second for S seconds and puts the same bytes object in every queue. `GET /sent` answers
`[[message id, time.monotonic() when it was queued], ...]` (the monotonic clock is the
machine's, so the bench compares it with its clients' read times). Served by uvicorn on
uvloop with the api's options and listening socket, so `bench.fanout` sets the api's
fan-out beside what the framework alone does on the same machine with the same clients.
Usage: python -m bench.baseline_feed PORT TEXT
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import msgspec
import uvicorn
from litestar import Litestar, get, post
from litestar.response import Stream

from feedsvc.config import Settings
from feedsvc.messages import Message

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_encoder = msgspec.json.Encoder()


def message_frame(eid: str, message: Message) -> bytes:
    """An `event: message` frame as the feed writes it (kept here: the feed's may change)."""
    return b"id: %s\nevent: message\ndata: %s\n\n" % (eid.encode(), _encoder.encode(message))


class Hub:
    """The connected streams' queues and what was broadcast to them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.queues: set[asyncio.Queue[bytes]] = set()
        self.sent: list[tuple[str, float]] = []
        self.task: asyncio.Task[None] | None = None

    async def broadcast(self, rate: float, seconds: float) -> None:
        """`rate` frames a second on an absolute schedule, each to every queue."""
        began = time.monotonic()
        for i in range(round(rate * seconds)):
            await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
            message = Message(uuid.uuid4(), "bench_feed", self.text, datetime.now(UTC))
            frame = message_frame(f"{i}-{message.id.hex[:8]}", message)
            now = time.monotonic()
            for queue in self.queues:
                queue.put_nowait(frame)
            self.sent.append((str(message.id), now))


HUB = Hub("")


async def _frames(queue: asyncio.Queue[bytes]) -> AsyncIterator[bytes]:
    HUB.queues.add(queue)
    try:
        yield b"retry: 2000\n\n"
        while True:
            frames = [await queue.get()]
            while not queue.empty():
                frames.append(queue.get_nowait())
            yield b"".join(frames)
    finally:
        HUB.queues.discard(queue)


@get("/feed", media_type="text/event-stream")
async def feed() -> Stream:
    """A stream of every frame broadcast from now on."""
    return Stream(_frames(asyncio.Queue()), headers=HEADERS)


@post("/broadcast", status_code=202)
async def broadcast(rate: float, seconds: float) -> dict[str, int]:
    """Start broadcasting (in the background); answers the number of streams it goes to."""
    HUB.sent.clear()
    HUB.task = asyncio.create_task(HUB.broadcast(rate, seconds))
    return {"subscribers": len(HUB.queues)}


@get("/sent")
async def sent() -> list[tuple[str, float]]:
    """Every frame broadcast so far: message id and when it was queued."""
    return HUB.sent


@get("/health")
async def health() -> dict[str, int]:
    """Ready as soon as it listens; says how many streams are open."""
    return {"subscribers": len(HUB.queues)}


def main(port: int, text: str) -> None:
    """Serve until SIGTERM."""
    HUB.text = text
    app = Litestar([feed, broadcast, sent, health], openapi_config=None)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
    )
    # The api's listening socket: same backlog and the same fixed send buffer per client.
    sock = socket.create_server(("127.0.0.1", port), backlog=2048)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, Settings().socket_sndbuf)
    anyio.run(uvicorn.Server(config).serve, [sock], backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
