"""SSE feed clients: `FeedStream` (one stream) and `Clients` (streams held by worker processes).

The clients are asyncio protocols on uvloop (HTTP/1.1, a minimal chunked and SSE parser,
one clock read per socket read) in processes of their own, so that their parsing does not
run on the api's core. Event ids are opaque strings: a stream keeps the last one it read
and resumes with it as `Last-Event-ID`. Messages are keyed by the message id in `data:`.
Times are `time.monotonic()`, one clock for every process on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Sequence
from typing import Any, cast

import httpx

from bench.proc import cpu_seconds
from bench.report import say


class FeedStream(asyncio.Protocol):
    """One SSE stream: when each `event: message` was first read, by message id.

    Note: with `reconnect`, a stream the server closed (or that failed to connect) opens
    again after `backoff_s` with the last event id it read, as a browser's EventSource does.
    """

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        local_addr: str | None = None,
        *,
        reconnect: bool = False,
        backoff_s: float = 0.5,
    ) -> None:
        self.host, self.port, self.path, self.local_addr = host, port, path, local_addr
        self.reconnect = reconnect
        self.backoff_s = backoff_s
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.seen: dict[bytes, float] = {}
        self.duplicate_keys: list[bytes] = []
        self.last_id: str | None = None
        self.resumes = 0  # `event: resume` notices read
        self.resets = 0  # `event: reset` notices read
        self.closed_by_server = 0
        self.reconnects = 0
        self.dropped = False  # closed by us: no reconnect
        self._reset_parser()

    def _reset_parser(self) -> None:
        self._in_head = True
        self._head = b""  # the response head, while incomplete
        self._chunks = b""  # undecoded chunked-transfer bytes
        self._need = 0  # payload bytes left in the current chunk
        self._skip = 0  # the CRLF after a chunk's payload, still to skip
        self._sse = b""  # payload not yet ending in a blank line

    @property
    def duplicates(self) -> int:
        """Messages read more than once."""
        return len(self.duplicate_keys)

    def request(self) -> bytes:
        """The GET, with `Last-Event-ID` once an event was read."""
        resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id is not None else ""
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Accept: text/event-stream\r\n{resume}Connection: keep-alive\r\n\r\n"
        ).encode()

    async def connect(self) -> None:
        """Open the connection and send the request (does not wait for the answer)."""
        local = (self.local_addr, 0) if self.local_addr else None
        await asyncio.get_running_loop().create_connection(
            lambda: self, self.host, self.port, local_addr=local
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self._reset_parser()
        self.transport.write(self.request())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.dropped:
            return
        self.closed_by_server += 1
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the first event: {exc}"))
        if self.reconnect:
            asyncio.get_running_loop().create_task(self._again())

    async def _again(self) -> None:
        while not self.dropped:
            await asyncio.sleep(self.backoff_s)
            try:
                await self.connect()
            except OSError:
                continue
            self.reconnects += 1
            return

    def drop(self) -> None:
        """Close the connection from our side, without reconnecting."""
        self.dropped = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._in_head:
            data = self._headers(data)
            if not data:
                return
        buf = self._chunks + data if self._chunks else data
        parts: list[bytes] = []
        pos, size = 0, len(buf)
        while pos < size:
            if self._need:
                take = min(self._need, size - pos)
                parts.append(buf[pos : pos + take])
                pos += take
                self._need -= take
                if not self._need:
                    self._skip = 2
            elif self._skip:
                step = min(self._skip, size - pos)
                pos += step
                self._skip -= step
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                length = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if length == 0:
                    break  # the last chunk: the server ended the stream
                self._need = length
        self._chunks = buf[pos:]
        if parts:
            self._events(b"".join(parts), now)

    def _headers(self, data: bytes) -> bytes:
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._head = head
            return b""
        status = head[: head.find(b"\r\n")]
        lower = head[:end].lower()
        if b" 200 " not in status + b" " or b"transfer-encoding: chunked" not in lower:
            if not self.opened.done():
                self.opened.set_exception(ConnectionError(f"unexpected answer: {head[:end]!r}"))
            assert self.transport is not None
            self.transport.close()
            return b""
        self._in_head, self._head = False, b""
        return head[end + 4 :]

    def _events(self, payload: bytes, now: float) -> None:
        events = (self._sse + payload).split(b"\n\n")
        self._sse = events.pop()
        for event in events:
            start = 0 if event.startswith(b"id: ") else event.find(b"\nid: ") + 1
            if start or event.startswith(b"id: "):
                end = event.find(b"\n", start)
                self.last_id = event[start + 4 : end if end >= 0 else None].decode()
            if b"event: message\n" in event:
                at = event.find(b'"id":"')
                key = event[at + 6 : event.find(b'"', at + 6)]
                if key in self.seen:
                    self.duplicate_keys.append(key)
                else:
                    self.seen[key] = now
            elif event.startswith(b"retry:") or b"\nretry:" in event:
                if not self.opened.done():
                    self.opened.set_result(None)
            elif b"event: resume\n" in event:
                self.resumes += 1
            elif b"event: reset\n" in event:
                self.resets += 1


# --- the worker processes ------------------------------------------------------------------


class _Worker:
    """The streams of one worker process and the commands it answers."""

    def __init__(self) -> None:
        self.streams: list[FeedStream] = []

    async def open(
        self,
        host: str,
        port: int,
        path: str,
        count: int,
        local_addrs: Sequence[str],
        reconnect: bool,
    ) -> tuple[int, str]:
        """Open `count` streams (200 at a time); the number that failed and the first error."""
        gate = asyncio.Semaphore(200)

        async def one(i: int) -> None:
            async with gate:
                addr = local_addrs[i % len(local_addrs)] if local_addrs else None
                stream = FeedStream(host, port, path, addr, reconnect=reconnect)
                self.streams.append(stream)
                await stream.connect()
                await asyncio.wait_for(stream.opened, 60)

        outcomes = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
        errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        return len(errors), errors[0] if errors else ""

    async def churn(
        self, host: str, port: int, path: str, rate: float, seconds: float
    ) -> tuple[int, int, str]:
        """Close the oldest stream and open a new one in its place, `rate` times a second
        for `seconds`; the number opened, the number that failed and the first error."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        opening: list[asyncio.Future[None]] = []
        i = 0
        while (at := start + i / rate) < start + seconds and self.streams:
            await asyncio.sleep(max(0.0, at - loop.time()))
            old = self.streams.pop(0)
            old.drop()
            new = FeedStream(host, port, path, old.local_addr)
            self.streams.append(new)
            opening.append(asyncio.ensure_future(self._open(new)))
            i += 1
        outcomes = await asyncio.gather(*opening, return_exceptions=True)
        errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        return len(outcomes) - len(errors), len(errors), errors[0] if errors else ""

    @staticmethod
    async def _open(stream: FeedStream) -> None:
        await stream.connect()
        await asyncio.wait_for(stream.opened, 60)

    async def reopen(self) -> tuple[int, str]:
        """Reconnect every dropped stream at once, each with its last event id."""
        streams = [s for s in self.streams if s.dropped]
        for stream in streams:
            stream.dropped = False
            stream.opened = asyncio.get_running_loop().create_future()
        outcomes = await asyncio.gather(*(s.connect() for s in streams), return_exceptions=True)
        errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        return len(errors), errors[0] if errors else ""

    def reads(self, keys: Sequence[str]) -> dict[str, tuple[int, float]]:
        """For each message id: how many streams read it, and the latest first read."""
        out: dict[str, tuple[int, float]] = {}
        for key in keys:
            raw = key.encode()
            times = [s.seen[raw] for s in self.streams if raw in s.seen]
            out[key] = (len(times), max(times, default=0.0))
        return out

    def collect(self, per_stream: bool) -> dict[str, Any]:
        times: dict[str, list[float]] = {}
        streams: list[dict[str, Any]] = []
        for stream in self.streams:
            if per_stream:
                streams.append(
                    {
                        "seen": [k.decode() for k in stream.seen],
                        "duplicates": [k.decode() for k in stream.duplicate_keys],
                    }
                )
            else:
                for key, at in stream.seen.items():
                    times.setdefault(key.decode(), []).append(at)
        return {
            "times": times,
            "streams": streams,
            "duplicates": sum(s.duplicates for s in self.streams),
            "resumes": sum(s.resumes for s in self.streams),
            "resets": sum(s.resets for s in self.streams),
            "closed_by_server": sum(s.closed_by_server for s in self.streams),
            "reconnects": sum(s.reconnects for s in self.streams),
        }

    async def serve(self, pipe: multiprocessing.connection.Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, *args = await loop.run_in_executor(None, pipe.recv)
            if command == "open":
                pipe.send(await self.open(*args))
            elif command == "count":
                pipe.send(sum(len(s.seen) + s.duplicates for s in self.streams))
            elif command == "min_seen":
                pipe.send(min((len(s.seen) for s in self.streams), default=0))
            elif command == "reads":
                pipe.send(self.reads(*args))
            elif command == "drop":
                for stream in self.streams:
                    stream.drop()
                pipe.send(len(self.streams))
            elif command == "churn":
                pipe.send(await self.churn(*args))
            elif command == "reopen":
                pipe.send(await self.reopen())
            elif command == "collect":
                per_stream, close = args
                pipe.send(self.collect(per_stream))
                if close:
                    for stream in self.streams:
                        stream.drop()
                    self.streams = []
                else:
                    for stream in self.streams:
                        stream.seen, stream.duplicate_keys = {}, []
            else:
                return


def _worker_main(pipe: multiprocessing.connection.Connection) -> None:
    import uvloop

    uvloop.run(_Worker().serve(pipe))


class Clients:
    """Worker processes, each holding an even share of the streams; a context manager."""

    def __init__(self, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for _ in range(processes):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(theirs,), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _all(self, *command: Any) -> list[Any]:
        for pipe in self.pipes:
            pipe.send(command)
        return [pipe.recv() for pipe in self.pipes]

    def open(
        self,
        url: str,
        path: str,
        count: int,
        *,
        local_addrs: Sequence[str] = (),
        reconnect: bool = False,
    ) -> int:
        """Open `count` streams to `url` + `path` across the workers; how many opened."""
        host, port = httpx.URL(url).host, httpx.URL(url).port
        n = len(self.pipes)
        shares = [count // n + (i < count % n) for i in range(n)]
        for pipe, share in zip(self.pipes, shares, strict=True):
            pipe.send(("open", host, port, path, share, list(local_addrs), reconnect))
        failed = 0
        for pipe in self.pipes:
            bad, error = pipe.recv()
            if bad:
                say(f"clients: {bad} streams failed to open, first: {error}")
            failed += bad
        return count - failed

    def events(self) -> int:
        """Events read so far by every stream (duplicates included)."""
        return sum(int(x) for x in self._all("count"))

    def min_seen(self) -> int:
        """The fewest distinct messages any one stream has read."""
        return min(int(x) for x in self._all("min_seen"))

    def reads(self, keys: Sequence[str]) -> dict[str, tuple[int, float]]:
        """For each message id: how many streams read it, and when the last of them did."""
        merged: dict[str, tuple[int, float]] = {key: (0, 0.0) for key in keys}
        for part in self._all("reads", list(keys)):
            for key, (count, at) in part.items():
                had, last = merged[key]
                merged[key] = (had + count, max(last, at))
        return merged

    def drop(self) -> int:
        """Close every stream from the client side at once; how many."""
        return sum(int(x) for x in self._all("drop"))

    def churn(self, url: str, path: str, rate: float, seconds: float) -> tuple[int, int]:
        """Replace the oldest stream by a new one to `url` + `path`, `rate` times a second
        across the workers, for `seconds`; how many opened and how many failed."""
        host, port = httpx.URL(url).host, httpx.URL(url).port
        n = len(self.pipes)
        for pipe in self.pipes:
            pipe.send(("churn", host, port, path, rate / n, seconds))
        opened = failed = 0
        for pipe in self.pipes:
            good, bad, error = pipe.recv()
            if bad:
                say(f"clients: {bad} streams failed to reopen, first: {error}")
            opened, failed = opened + good, failed + bad
        return opened, failed

    def reopen(self) -> int:
        """Reconnect every dropped stream with its last event id; how many failed."""
        return sum(int(failed) for failed, _ in self._all("reopen"))

    def collect(self, *, per_stream: bool = False, close: bool = True) -> dict[str, Any]:
        """Every stream's reads, merged (and per stream if asked).

        The streams are closed, or with `close=False` kept open with their reads forgotten.
        """
        merged: dict[str, Any] = {"times": {}, "streams": []}
        for part in self._all("collect", per_stream, close):
            for key, times in part.pop("times").items():
                merged["times"].setdefault(key, []).extend(times)
            merged["streams"].extend(part.pop("streams"))
            for key, value in part.items():
                merged[key] = merged.get(key, 0) + value
        return merged

    def cpu_s(self) -> float:
        """CPU seconds the workers have used so far."""
        return sum(cpu_seconds(p.pid) for p in self.procs if p.pid is not None)

    def close(self) -> None:
        """Stop the workers (their streams close with them)."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit",))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
