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
import resource
import socket
from collections.abc import Callable

from feedsvc.serving.refusal import Refusals, Refusing

log = logging.getLogger(__name__)

BATCH = 1024
"""The most connections accepted in one go; the rest wait for the next loop iteration."""

REFUSING = 64
"""The most refused connections waiting for their request at once; past it, each is
answered from what it has sent so far. They hold descriptors of the reserve beyond the cap."""

PAUSE_S = 1.0
"""How long accepting pauses after accept(2) failed (e.g. out of file descriptors)."""


class Acceptor:
    """Serves a listening socket with `protocol_factory`, accepting in batches, and refuses
    connections past `max_connections` open (`open_connections()` of them are served).

    Note: each connection is handed to the running loop's `connect_accepted_socket`,
    the loop's documented way to serve a socket accepted elsewhere
    (https://docs.python.org/3/library/asyncio-eventloop.html#asyncio.loop.connect_accepted_socket).
    Accepted sockets inherit the listener's options (its send buffer); TCP_NODELAY is set
    on each, as the loop's own server does. A connection past the cap gets an answer
    from `refusals` and is closed (`refused` counts them).
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        max_connections: int,
        open_connections: Callable[[], int],
        refusals: Refusals,
    ):
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.max_connections = max_connections
        self.open_connections = open_connections
        self.refusals = refusals
        self.accepted = 0
        self.refused = 0
        self._refusing = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._pending_refusals: set[asyncio.Task[None]] = set()
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
            # Served: those whose protocol runs, and those on their way to it.
            if self.open_connections() + len(self._pending) >= self.max_connections:
                self._refuse(loop, conn)
                continue
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            task = loop.create_task(self._serve(loop, conn, self.protocol_factory))
            self._pending.add(task)  # referenced until done: the loop keeps weak references
            task.add_done_callback(self._pending.discard)

    def _refuse(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        self.refused += 1
        if self._refusing >= REFUSING:
            self.refusals.at_once(conn)
            return
        self._refusing += 1

        def refusing() -> asyncio.Protocol:
            return Refusing(self.refusals, self._refused)

        task = loop.create_task(self._serve(loop, conn, refusing, self._refused))
        self._pending_refusals.add(task)
        task.add_done_callback(self._pending_refusals.discard)

    def _refused(self) -> None:
        self._refusing -= 1

    async def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: socket.socket,
        protocol: Callable[[], asyncio.Protocol],
        failed: Callable[[], None] | None = None,
    ) -> None:
        try:
            await loop.connect_accepted_socket(protocol, conn)
        except Exception as exc:
            conn.close()
            if failed is not None:
                failed()
            log.warning("a connection failed to start", extra={"error": repr(exc)})


def connection_cap(configured: int) -> int:
    """The most connections a worker serves: `configured` (0: no choice) within its file limit.

    Note: a quarter of the limit, at most 1,000, is kept for everything else the worker
    opens (Kafka, the database pool, metrics files, refusals in progress).
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured or 1_000_000
    room = max(1, soft - min(1000, soft // 4))
    if configured > room:
        log.warning(
            "FEED_MAX_CONNECTIONS is above what the file limit allows; lowered",
            extra={"configured": configured, "used": room, "file_limit": soft},
        )
    return min(configured, room) if configured else room
