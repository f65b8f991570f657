"""`GuardedHttp` on a fake transport: what it counts, when its timers act, what it writes."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from feedsvc.serving.limits import Cuts, GuardedHttp, Limits, refusals

HEAD_LIMIT = 1024
QUICK = Limits(max_head_bytes=HEAD_LIMIT, head_timeout_s=0.05, idle_timeout_s=0.05)
SLOW = Limits(max_head_bytes=HEAD_LIMIT, head_timeout_s=60, idle_timeout_s=60)


class FakeTransport:
    """Gathers what is written; closing is noted, not done."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:
        self.written += data

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def endless(scope: Any, receive: Any, send: Any) -> None:
    """A stream that never ends, as a feed does."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.Event().wait()


def connect(limits: Limits, app: Any = ok) -> tuple[GuardedHttp, FakeTransport, Cuts]:
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    cuts = Cuts()
    protocol = GuardedHttp(
        config=config,
        server_state=ServerState(),
        app_state={},
        limits=limits,
        cuts=cuts,
        refusals=refusals(limits),
    )
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, cuts


def head(size: int) -> bytes:
    """A GET head of exactly `size` bytes."""
    start, end = b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


async def until(check: Any, within: float = 5.0) -> None:
    """Let the loop run until `check()` holds (bounded)."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_a_head_at_the_limit_is_served() -> None:
    """A head of exactly the limit, in small chunks, is answered by the app."""
    protocol, transport, _ = connect(SLOW)
    data = head(HEAD_LIMIT)
    for i in range(0, len(data), 100):
        protocol.data_received(data[i : i + 100])
    await until(lambda: transport.written.startswith(b"HTTP/1.1 200"))


async def test_a_head_one_byte_over_the_limit_gets_431_and_the_end_of_our_side() -> None:
    """One byte more: 431, our side ended, counted; the connection closes after lingering."""
    protocol, transport, cuts = connect(SLOW)
    protocol.data_received(head(HEAD_LIMIT + 1))
    assert transport.written.startswith(b"HTTP/1.1 431")
    assert (transport.eof, cuts.head_too_large) == (True, 1)


async def test_the_head_count_starts_again_after_each_answer() -> None:
    """Two requests on one connection, each under the limit and together over it, are served."""
    protocol, transport, _ = connect(SLOW)
    protocol.data_received(head(HEAD_LIMIT * 3 // 4))
    await until(lambda: transport.written.count(b"HTTP/1.1 200") == 1)
    protocol.data_received(head(HEAD_LIMIT * 3 // 4))
    await until(lambda: transport.written.count(b"HTTP/1.1 200") == 2)


async def test_a_head_that_takes_too_long_gets_408() -> None:
    """Half a head and nothing more: 408 once the head's time is up."""
    protocol, transport, cuts = connect(QUICK)
    protocol.data_received(head(200)[:100])
    await until(lambda: transport.written.startswith(b"HTTP/1.1 408"))
    assert cuts.head_timeout == 1


async def test_a_silent_connection_is_closed_without_an_answer() -> None:
    """No byte at all: closed once the idle time is up, nothing written."""
    _, transport, cuts = connect(QUICK)
    await until(lambda: transport.closed)
    assert (transport.written, cuts.idle) == (b"", 1)


async def test_a_request_being_served_has_no_timer() -> None:
    """An endless answer outlives the idle and head limits many times over."""
    protocol, transport, cuts = connect(QUICK, endless)
    protocol.data_received(head(200))
    await until(lambda: transport.written.startswith(b"HTTP/1.1 200"))
    await asyncio.sleep(QUICK.idle_timeout_s * 10)
    assert (transport.closed, cuts) == (False, Cuts())


async def test_a_head_pipelined_behind_an_endless_answer_is_cut_at_the_limit() -> None:
    """Header bytes behind a stream's request: the connection closes once past the limit."""
    protocol, transport, cuts = connect(SLOW, endless)
    protocol.data_received(head(200))
    await until(lambda: transport.written.startswith(b"HTTP/1.1 200"))
    protocol.data_received(b"GET / HTTP/1.1\r\nX-Pad: ")
    for _ in range(HEAD_LIMIT // 100 + 1):
        protocol.data_received(b"a" * 100)
    assert (transport.closed, cuts.head_too_large) == (True, 1)
