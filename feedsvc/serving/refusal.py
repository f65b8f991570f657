"""Answering a connection past the worker's cap: an answer and a close, never a reset.

Why an answer rather than a reset (a close with SO_LINGER 0, or leaving it unaccepted):
a client told 503 and `Retry-After` waits and comes back (the bot, a proxy's retry
policy), while a reset reads as a network fault that many clients retry at once. A
feed request is answered as the feed answers when it is full, 200 with a `retry:` hint:
a browser's EventSource gives up for good on a 503 (ARCHITECTURE.md#limits-at-the-edge).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WAIT_S = 1.0
"""How long a refused connection may take to send its request line before it gets the 503."""


@dataclass(frozen=True, slots=True)
class Refusals:
    """The raw answers to a connection past the cap: `feed` to a feed request, else `busy`."""

    busy: bytes
    feed: bytes

    def to(self, request: bytes) -> bytes:
        """The answer to a connection whose first bytes are `request`."""
        if request.startswith(b"GET /feed") and request[9:10] in (b" ", b"?"):
            return self.feed
        return self.busy

    def at_once(self, conn: socket.socket) -> None:
        """Answer from what `conn` has already sent, and close it, without the loop."""
        request = b""
        with contextlib.suppress(OSError):
            # Read first, so that the close sends a FIN after the answer, not a reset
            # that may destroy it (RFC 1122 4.2.2.13).
            request = conn.recv(65536)
        with contextlib.suppress(OSError):
            conn.send(self.to(request))
        conn.close()


class Refusing(asyncio.Protocol):
    """Waits up to `WAIT_S` for a request's first bytes, answers it from `refusals`, closes."""

    def __init__(self, refusals: Refusals, done: Callable[[], None]) -> None:
        self.refusals = refusals
        self.done = done
        self._transport: Any = None  # uvloop's transports are not asyncio's
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(WAIT_S, self._answer, b"")

    def data_received(self, data: bytes) -> None:
        self._answer(data)

    def _answer(self, request: bytes) -> None:
        if self._timer is None:
            return  # answered
        self._timer.cancel()
        self._timer = None
        self._transport.write(self.refusals.to(request))
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.done()
