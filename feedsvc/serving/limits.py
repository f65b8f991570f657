"""Limits on what a connection may send or withhold before its request is served.

uvicorn's httptools protocol reads a request head of any size (httptools gathers a header
in memory until its end) and starts its keep-alive timer only after a first answer, so a
connection that sends nothing, or a head a line at a time, is held forever
(ARCHITECTURE.md#limits-at-the-edge). `GuardedHttp` is that protocol with a phase per
connection: idle (no request yet), in a head (counted and timed), busy (a request is
served: no limit here, so feed streams live as long as their heartbeats), lingering (an
answer refused, the rest discarded).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from feedsvc.http.errors import Answer

LINGER_S = 1.0
"""How long a refused connection's incoming bytes are read and dropped before it closes:
a close with unread bytes sends a reset, which can destroy the answer before the client
reads it (nginx's lingering close, https://nginx.org/en/docs/http/ngx_http_core_module.html#lingering_close)."""

LINGER_BYTES = 1 << 20
"""The most bytes dropped while lingering; a client that sends more is cut at once."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a connection may do before a request of its is served."""

    max_head_bytes: int
    head_timeout_s: float
    idle_timeout_s: float


@dataclass(slots=True)
class Cuts:
    """Connections cut by the limits, by reason, since the worker started."""

    head_too_large: int = 0
    head_timeout: int = 0
    idle: int = 0


class _Phase(enum.Enum):
    IDLE = "no request yet"
    HEAD = "in a request's head"
    BUSY = "a request is served"
    LINGERING = "refused; dropping what comes"


def raw(answer: Answer) -> bytes:
    """`answer` as HTTP/1.1 bytes that close the connection, for a socket without a framework."""
    head = [STATUS_LINE[answer.status], b"content-type: application/json\r\n"]
    head.append(b"content-length: %d\r\n" % len(answer.body))
    head.extend(f"{n}: {v}\r\n".encode("latin-1") for n, v in answer.headers)
    head.append(b"connection: close\r\n\r\n")
    return b"".join(head) + answer.body


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol within `Limits`; what it cuts is counted in `cuts`.

    Note: a head over `max_head_bytes` gets 431 and one that takes longer than
    `head_timeout_s` gets 408, and the connection closes; httptools never holds more
    than `max_head_bytes` of a head. A connection that sends no request within
    `idle_timeout_s` is closed (after an answer, uvicorn's keep-alive timer does that,
    set to the same value). A request being served has no time limit here; a head sent
    behind it (pipelined) is counted, and past the limit the connection closes, as no
    answer can be written in the middle of another.
    """

    def __init__(
        self, *args: Any, limits: Limits, cuts: Cuts, refusals: dict[int, bytes], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.cuts = cuts
        self._refusals = refusals
        self._phase = _Phase.IDLE
        self._in_head = False
        """Bytes of a request head are arriving (the first request's, or one pipelined)."""
        self._head_bytes = 0
        self._lingered = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.idle_timeout_s, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase is _Phase.LINGERING:
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES:
                self.transport.close()
            return
        if self._phase is _Phase.IDLE:
            # The first byte of a request starts its head's clock.
            self._disarm()
            self._phase, self._in_head = _Phase.HEAD, True
        if not self._in_head:
            super().data_received(data)
            return
        room = self.limits.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
        else:
            # Only what fits reaches the parser: the head may end within it.
            self._head_bytes += room
            super().data_received(data[:room])
            if self._in_head:
                self.cuts.head_too_large += 1
                if self._phase is _Phase.HEAD:
                    self._refuse(431)
                else:  # pipelined behind an answer still being written: no room for another
                    self.transport.close()
            elif not self.transport.is_closing():
                super().data_received(data[room:])
        if self._phase is _Phase.HEAD and self._timer is None:
            # Most heads come whole in their first read: a timer only for those that did not.
            self._timer = self.loop.call_later(self.limits.head_timeout_s, self._late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase is _Phase.BUSY:
            # A request pipelined behind the one served: its head is counted too.
            self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._phase is _Phase.HEAD:
            self._phase = _Phase.BUSY
            self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A pipelined request whose head is whole is served at once: still busy.
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if pipelined or self._phase is not _Phase.BUSY:
            return
        if self._in_head:  # part of the next head is here: its clock runs from now
            self._phase = _Phase.HEAD
            self._arm(self.limits.head_timeout_s, self._late)
        else:
            self._phase, self._head_bytes = _Phase.IDLE, 0

    def _idle(self) -> None:
        if self._phase is _Phase.IDLE:
            self.cuts.idle += 1
            self.transport.close()

    def _late(self) -> None:
        if self._phase is _Phase.HEAD:
            self.cuts.head_timeout += 1
            self._refuse(408)

    def _refuse(self, status: int) -> None:
        """Answer `status`, end our side, and drop what still comes until the linger ends."""
        self._phase = _Phase.LINGERING
        self.transport.write(self._refusals[status])
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_S, self.transport.close)

    def _arm(self, seconds: float, then: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def refusals(limits: Limits) -> dict[int, bytes]:
    """The raw answers `GuardedHttp` writes, rendered once per worker."""
    return {
        431: raw(
            Answer.problem(431, f"the request head is over {limits.max_head_bytes} bytes", "head")
        ),
        408: raw(
            Answer.problem(
                408, f"the request head did not arrive within {limits.head_timeout_s:g} s", "head"
            )
        ),
    }
