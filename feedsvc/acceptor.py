"""Accepting connections: every pending one each time the listening socket is readable.

Why not the event loop's own server: uvloop's server is libuv's, and libuv accepts one
connection per loop iteration since 1.45 ("unix: don't accept() connections in a loop",
https://github.com/libuv/libuv/pull/3696). With hundreds of busy connections an iteration
takes tens of milliseconds, so new connections were accepted at about 13 a second per
worker and waited up to 22 s in the kernel's accept queue (issue 12: a 429 answered in
under a millisecond by the api reached its client 4.5 s after it connected). A reconnect
storm of feed clients meets the same queue. asyncio's own loop accepts up to `backlog`
per iteration, as this does, but costs half again as much CPU per request as uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger(__name__)

BATCH = 1024
"""The most connections accepted in one go; the rest wait for the next loop iteration."""

PAUSE_S = 1.0
"""How long accepting pauses after accept(2) failed (e.g. out of file descriptors)."""


class Acceptor:
    """Serves a listening socket with `protocol_factory`, accepting in batches.

    Note: each connection is handed to the running loop's `connect_accepted_socket`,
    the loop's documented way to serve a socket accepted elsewhere
    (https://docs.python.org/3/library/asyncio-eventloop.html#asyncio.loop.connect_accepted_socket).
    Accepted sockets inherit the listener's options (its send buffer); TCP_NODELAY is set
    on each, as the loop's own server does.
    """

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol]):
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._watching = False

    def start(self) -> None:
        """Start accepting (on the running loop)."""
        self.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._watch()

    def close(self) -> None:
        """Stop accepting; connections already accepted are left to their protocols."""
        self._unwatch()
        self._loop = None

    def _watch(self) -> None:
        if self._loop is not None and not self._watching:
            self._loop.add_reader(self.sock.fileno(), self._accept)
            self._watching = True

    def _unwatch(self) -> None:
        if self._loop is not None and self._watching:
            self._loop.remove_reader(self.sock.fileno())
            self._watching = False

    def _accept(self) -> None:
        loop = self._loop
        assert loop is not None
        for _ in range(BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                # Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), or worse:
                # pause rather than spin on a socket that stays readable.
                log.error(
                    "cannot accept connections; pausing",
                    extra={"error": repr(exc), "pause_s": PAUSE_S},
                )
                self._unwatch()
                loop.call_later(PAUSE_S, self._watch)
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            task = loop.create_task(self._serve(loop, conn))
            self._pending.add(task)  # referenced until done: the loop keeps weak references
            task.add_done_callback(self._pending.discard)

    async def _serve(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(self.protocol_factory, conn)
        except Exception as exc:
            conn.close()
            log.warning("a connection failed to start", extra={"error": repr(exc)})


class CoalescingTransport:
    """A connection's transport whose writes within one loop turn leave in one send(2).

    Why: uvicorn writes an answer's status line and headers, then its body, with two
    writes, and on loopback each write is a send(2) that also runs the receiver's TCP
    path: under a flood of refusals the two were 30 % of a worker's CPU (py-spy). Writes
    are gathered and written together at the start of the loop's next turn (a
    `call_soon`); `close` and `write_eof` write what is gathered first.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop):
        # Any: uvloop's transports are not subclasses of asyncio's.
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes | bytearray | memoryview] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        gathered = sum(len(d) for d in self._pending) if self._pending else 0
        return int(self._transport.get_write_buffer_size()) + gathered

    def __getattr__(self, name: str) -> Any:
        # Everything else (reading, flow control, extra info) is the transport's own.
        return getattr(self._transport, name)


class CoalescingProtocol(asyncio.Protocol):
    """`protocol`, given its transport as a `CoalescingTransport`."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        self.protocol.connection_made(cast(asyncio.BaseTransport, coalescing))

    def data_received(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()
