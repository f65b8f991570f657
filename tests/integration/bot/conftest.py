"""A real HTTP api stand-in that records arrivals, and the bot run as `python -m bot`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process, SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from devstack.poll import wait_for
from feedsvc.messages import MAX_BODY_BYTES, InvalidSubmission, decode_submission

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Arrival:
    """One `POST /messages` as the server saw it: when it came, when it was answered."""

    at: float
    answered_at: float
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass
class RecordingApi:
    """Answers `POST /messages` like the api: 202, or 400 for a body the api would refuse.

    `plan[n]` overrides the answer to the n-th request (from 0) with (status, Retry-After).
    """

    url: str = ""
    arrivals: list[Arrival] = field(default_factory=list)
    plan: dict[int, tuple[int, str]] = field(default_factory=dict)
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    @staticmethod
    def rate(arrivals: list[Arrival]) -> float:
        """Requests per second between the first and the last of these arrivals."""
        return (len(arrivals) - 1) / (arrivals[-1].at - arrivals[0].at)

    async def wait_for(self, count: int, within: float) -> list[Arrival]:
        """The first `count` arrivals; fails if they take longer than `within` seconds."""
        with anyio.fail_after(within):
            while len(self.arrivals) < count:
                await self._arrived.wait()
        return self.arrivals[:count]

    async def serve(self, stream: SocketStream) -> None:
        buffered = BufferedByteReceiveStream(stream)
        async with stream:
            try:
                while True:  # keep-alive: many requests per connection
                    await self._exchange(buffered, stream)
            except (
                anyio.EndOfStream,
                anyio.IncompleteRead,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
            ):
                return  # the bot closed the connection, or was killed mid-request

    async def _exchange(self, buffered: BufferedByteReceiveStream, stream: SocketStream) -> None:
        head = await buffered.receive_until(b"\r\n\r\n", 65536)
        at = anyio.current_time()
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
        body = await buffered.receive_exactly(int(headers.get("content-length", "0")))
        status, answer, extra = self._answer(lines[0], headers, body)
        arrival = Arrival(at, at, status, body, headers)
        if lines[0].startswith("POST /messages "):
            # Recorded before the answer goes out (no await in between), so the n-th
            # request gets `plan[n]` however many connections are open.
            self.arrivals.append(arrival)
        payload = json.dumps(answer).encode()
        await stream.send(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        arrival.answered_at = anyio.current_time()
        self._arrived.set()
        self._arrived = anyio.Event()

    def _answer(
        self, request_line: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], str]:
        if not request_line.startswith("POST /messages "):
            return 404, {"error": "not found"}, ""
        if (status_after := self.plan.get(len(self.arrivals))) is not None:
            status, retry_after = status_after
            return status, {"error": "busy"}, f"Retry-After: {retry_after}\r\n"
        if headers.get("content-type") != "application/json" or len(body) > MAX_BODY_BYTES:
            return 415, {"error": "bad content type or size"}, ""
        try:
            decode_submission(body)
        except InvalidSubmission as exc:
            return 400, {"error": exc.detail}, ""
        return 202, {"status": "accepted"}, ""


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    # The server shares a busy test machine with the bot: uvloop's lower cost per request
    # keeps it from being what limits the rate being measured.
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture
async def api() -> AsyncIterator[RecordingApi]:
    """A recording api on 127.0.0.1 and a free port, for one test."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server = RecordingApi(url=f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.serve)
        yield server
        tg.cancel_scope.cancel()


@dataclass
class BotProcess:
    """A running `python -m bot`, its JSON log lines in a file."""

    process: Process
    log_path: Path

    def logs(self) -> list[dict[str, Any]]:
        """Every log line so far, decoded."""
        text = self.log_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    async def wait_for_log(self, msg: str, within: float = 30) -> dict[str, Any]:
        """The first log line with this message; fails after `within` seconds (a Python start
        on a loaded 2-core machine alone can take ten)."""

        async def lines() -> list[dict[str, Any]]:
            found = [line for line in self.logs() if line["msg"] == msg]
            if not found and self.process.returncode is not None:
                raise AssertionError(f"bot exited: {self.log_path.read_text()}")
            return found

        found = await wait_for(lines, bool, within, f"the log line {msg!r}", interval=0.05)
        return found[0]

    async def control_url(self) -> str:
        """Where the bot's control endpoint listens (the bot is started with port 0)."""
        return f"http://127.0.0.1:{(await self.wait_for_log('control listening'))['port']}"

    async def stop(self, within: float = 10) -> int:
        """SIGTERM, then the exit code; fails if the bot takes longer than `within`."""
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(within):
            return await self.process.wait()


StartBot = Callable[..., Awaitable[BotProcess]]


@pytest.fixture
async def start_bot(tmp_path: Path) -> AsyncIterator[StartBot]:
    """Start the bot with these flags (`--control-port 0` unless given); killed at teardown."""
    started: list[BotProcess] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> BotProcess:
        log_path = tmp_path / f"bot-{len(started)}.log"
        flags = list(args) if "--control-port" in args else [*args, "--control-port", "0"]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
        with log_path.open("wb") as log_file:
            process = await anyio.open_process(
                [sys.executable, "-m", "bot", *flags],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                cwd=ROOT,
                env={**environ, **(env or {})},
            )
        started.append(BotProcess(process, log_path))
        return started[-1]

    yield start
    for bot in started:
        if bot.process.returncode is None:
            bot.process.kill()
            await bot.process.wait()
        await bot.process.aclose()
