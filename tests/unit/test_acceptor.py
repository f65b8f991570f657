"""The acceptor takes every pending connection at once, even from a busy event loop.

Each test runs uvloop (the api's loop) with a callback that keeps it busy, 20 ms a turn,
and counts the turns the accepts took: timing-independent, so a loaded machine cannot
make it pass or fail.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from feedsvc.serving import acceptor
from feedsvc.serving.acceptor import Acceptor
from feedsvc.serving.coalescing import CoalescingTransport
from feedsvc.serving.refusal import Refusals

CLIENTS = 200


class Counted(asyncio.Protocol):
    """Notes the loop turn at which each connection was made, and echoes a byte."""

    def __init__(self, turns: list[int], made: list[int]) -> None:
        self.turns, self.made = turns, made

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self.made.append(self.turns[0])
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _accept_under_load(
    serve: Callable[[socket.socket, Callable[[], asyncio.Protocol]], Coroutine[Any, Any, object]],
) -> list[int]:
    """The loop turns at which CLIENTS connections, all waiting in the accept queue when
    serving starts, were accepted."""
    loop = asyncio.get_running_loop()
    turns, made = [0], list[int]()
    done = asyncio.Event()

    def busy() -> None:
        turns[0] += 1
        until = time.monotonic() + 0.02
        while time.monotonic() < until:
            pass
        if len(made) >= CLIENTS or turns[0] >= 2000:
            done.set()
        else:
            loop.call_soon(busy)

    sock = socket.create_server(("127.0.0.1", 0), backlog=2048)
    port = sock.getsockname()[1]
    # The kernel completes these handshakes by itself: they queue until accepted.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CLIENTS)]
    try:
        loop.call_soon(busy)
        close = await serve(sock, lambda: Counted(turns, made))
        await done.wait()
        clients[0].sendall(b"x")  # a connection accepted works
        assert await asyncio.to_thread(clients[0].recv, 1) == b"x"
    finally:
        for client in clients:
            client.close()
    assert callable(close)
    close()
    return made


def _uncapped(sock: socket.socket, factory: Callable[[], asyncio.Protocol]) -> Acceptor:
    return Acceptor(
        sock,
        factory,
        max_connections=1_000_000,
        open_connections=lambda: 0,
        refusals=Refusals(b"", b""),
    )


async def _with_acceptor(
    sock: socket.socket, factory: Callable[[], asyncio.Protocol]
) -> Callable[[], None]:
    acceptor = _uncapped(sock, factory)
    acceptor.start()

    def close() -> None:
        acceptor.close()
        sock.close()

    return close


async def _with_loop_server(
    sock: socket.socket, factory: Callable[[], asyncio.Protocol]
) -> Callable[[], None]:
    server = await asyncio.get_running_loop().create_server(factory, sock=sock)
    return server.close


def test_every_pending_connection_is_accepted_in_one_turn() -> None:
    """200 connections waiting: all accepted within the first turns of a busy loop."""
    turns = uvloop.run(_accept_under_load(_with_acceptor))
    assert len(turns) == CLIENTS
    assert max(turns) <= 3, turns


def test_the_loops_own_server_accepts_one_a_turn() -> None:
    """Why the acceptor exists: uvloop's server (libuv >= 1.45) takes one per turn."""
    turns = uvloop.run(_accept_under_load(_with_loop_server))
    assert max(turns) >= CLIENTS / 2, turns


class Recording:
    """The transport under a CoalescingTransport: records each write and the close."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_writes_of_one_turn_leave_together() -> None:
    """Headers then body in one turn: one write with both, at the next turn; later
    writes start a new one."""
    inner = Recording()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
    transport.write(memoryview(b"{}"))
    assert inner.writes == [] and transport.get_write_buffer_size() == 27
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 202 Accepted\r\n\r\n{}"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"next"]
    assert transport.get_extra_info("peername") == "info:peername"


async def test_close_writes_what_is_gathered_and_abort_drops_it() -> None:
    """close: the gathered bytes first, then the close; abort: nothing more is written."""
    loop = asyncio.get_running_loop()
    inner = Recording()
    closing = CoalescingTransport(inner, loop)
    closing.write(b"last words")
    closing.close()
    assert (inner.writes, inner.closed) == ([b"last words"], True)
    inner = Recording()
    aborting = CoalescingTransport(inner, loop)
    aborting.write(b"never")
    aborting.abort()
    await asyncio.sleep(0)
    assert (inner.writes, inner.aborted) == ([], True)


class RunsOutOfFiles(socket.socket):
    """A listening socket whose first accept(2) fails as with no descriptor left."""

    failed = 0

    def accept(self) -> tuple[socket.socket, Any]:
        if not self.failed:
            self.failed += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_accept_failing_pauses_then_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors: accepting pauses (no spinning on the readable socket), then
    the waiting connection is served."""
    monkeypatch.setattr(acceptor, "PAUSE_S", 0.2)

    async def main() -> tuple[int, float]:
        sock = RunsOutOfFiles(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        began = time.monotonic()
        served = _uncapped(sock, lambda: Counted([0], []))
        with socket.create_connection(sock.getsockname()) as client:
            served.start()
            client.settimeout(5)
            client.sendall(b"x")
            assert await asyncio.to_thread(client.recv, 1) == b"x"  # served, after the pause
            waited = time.monotonic() - began
        served.close()
        sock.close()
        return sock.failed, waited

    failed, waited = uvloop.run(main())
    assert failed == 1
    assert 0.2 <= waited < 2.0


def _refused(request: bytes) -> tuple[bytes, int, int]:
    """What a client sending `request` reads from an acceptor whose cap is reached; the
    acceptor's refusal count and connections served."""

    async def main() -> tuple[bytes, int, int]:
        sock = socket.create_server(("127.0.0.1", 0))
        made: list[int] = []
        served = Acceptor(
            sock,
            lambda: Counted([0], made),
            max_connections=3,
            open_connections=lambda: 3,
            refusals=Refusals(busy=b"503 busy", feed=b"200 retry later"),
        )
        served.start()
        with socket.create_connection(sock.getsockname()) as client:
            client.settimeout(5)
            client.sendall(request)
            got = b""
            while chunk := await asyncio.to_thread(client.recv, 4096):
                got += chunk
        served.close()
        sock.close()
        return got, served.refused, len(made)

    return uvloop.run(main())


def test_a_connection_past_the_cap_gets_503_and_is_closed() -> None:
    """With the cap reached, a new connection reads the busy answer, then end of stream."""
    assert _refused(b"GET /messages HTTP/1.1\r\n\r\n") == (b"503 busy", 1, 0)


def test_a_feed_request_past_the_cap_gets_the_feeds_retry_answer() -> None:
    """A feed request past the cap reads the feed's answer (an EventSource stops on a 503)."""
    assert _refused(b"GET /feed?limit=0 HTTP/1.1\r\n\r\n") == (b"200 retry later", 1, 0)


def test_the_cap_is_lowered_below_the_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cap above the file limit is lowered, keeping a quarter of the descriptors for the rest."""
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert (acceptor.connection_cap(0), acceptor.connection_cap(5000)) == (768, 768)
    assert acceptor.connection_cap(100) == 100
