"""`scripts/bench feed`: live fan-out of GET /feed to many clients, with a baseline.

Starts a fresh native stack (writer, changefeed stand-in, api), opens N Server-Sent Events
streams to `GET /feed?limit=0`, then posts messages at a steady rate for S seconds and
records when each POST was accepted (202) and when each client read each event. Prints one
JSON object: deliveries per second over the steady window, delivery latency from "POST
accepted" to "event read by a client", missing and duplicated deliveries, the api's
resident memory per idle connection, CPU shares, and the same fan-out done by a bare
Litestar `Stream` app (scripts/bench_feed_baseline.py) to the same clients in the same run.

The clients: asyncio protocols on uvloop (HTTP/1.1, a minimal chunked and SSE parser, one
clock read per socket read) in `--client-procs` processes of their own, so that their
parsing does not run on the api's core; the poster is a light httpx client in the bench's
own process. All of it shares the machine with the stack: the load average and the CPU
each side used are printed with the figures. Times are `time.monotonic()`, one clock for
every process on the machine.

The latency is split in two: `first_read` (POST accepted -> the first client read it: the
write path, the changefeed and the relay) and `fanout_spread` (that first read -> each
other client's read: the fan-out's own share). A `first_read` below zero means the event
reached a client before the poster had read its 202 (a slow POST answer, not a fast feed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from bench_common import baseline_server, fresh_stack, loadavg, machine, say
from local_stack import Service

AUTHOR = "bench_feed"
TEXT = "bench feed message: a short text of about a hundred characters, like most posts are."
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# --- the clients (run in worker processes) -------------------------------------------------


class FeedStream(asyncio.Protocol):
    """One SSE stream: records when each `event: message` was first read, by message id."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.seen: dict[bytes, float] = {}
        self.duplicates = 0
        self.resumes = 0
        self.closed_by_server = False
        self._in_head = True
        self._head = b""  # the response head, while incomplete
        self._chunks = b""  # undecoded chunked-transfer bytes
        self._need = 0  # payload bytes left in the current chunk
        self._skip = 0  # the CRLF after a chunk's payload, still to skip
        self._sse = b""  # payload not yet ending in a blank line

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_by_server = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the first event: {exc}"))

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
            if b"\nevent: message\n" in event:
                at = event.find(b'"id":"')
                key = event[at + 6 : at + 42]
                if key in self.seen:
                    self.duplicates += 1
                else:
                    self.seen[key] = now
            elif event.startswith(b"retry:"):
                if not self.opened.done():
                    self.opened.set_result(None)
            elif b"\nevent: resume\n" in event:
                self.resumes += 1


async def _open(
    host: str, port: int, path: str, count: int, streams: list[FeedStream]
) -> tuple[int, str]:
    """Open `count` streams (100 at a time); the number that failed and the first error."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()
    gate = asyncio.Semaphore(100)

    async def one() -> None:
        async with gate:
            stream = FeedStream(request)
            await loop.create_connection(lambda: stream, host, port)
            streams.append(stream)
            await asyncio.wait_for(stream.opened, 30)

    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    return len(errors), errors[0] if errors else ""


def _summary(streams: Sequence[FeedStream]) -> dict[str, Any]:
    times: dict[str, list[float]] = {}
    for stream in streams:
        for key, at in stream.seen.items():
            times.setdefault(key.decode(), []).append(at)
    return {
        "times": times,
        "duplicates": sum(s.duplicates for s in streams),
        "resumes": sum(s.resumes for s in streams),
        "closed_by_server": sum(s.closed_by_server for s in streams),
    }


async def _serve_commands(pipe: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    streams: list[FeedStream] = []
    while True:
        command, *args = await loop.run_in_executor(None, pipe.recv)
        if command == "open":
            host, port, path, count = args
            failed, error = await _open(host, port, path, count, streams)
            pipe.send((failed, error))
        elif command == "count":
            pipe.send(sum(len(s.seen) + s.duplicates for s in streams))
        elif command == "collect":
            pipe.send(_summary(streams))
            for stream in streams:
                if stream.transport is not None:
                    stream.transport.abort()
            streams = []
        else:
            return


def client_process(pipe: multiprocessing.connection.Connection) -> None:
    """A worker process: holds streams and answers the bench's commands over `pipe`."""
    import uvloop

    uvloop.run(_serve_commands(pipe))


class Clients:
    """The client worker processes, each holding an even share of the streams."""

    def __init__(self, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for _ in range(processes):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=client_process, args=(theirs,), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    def open(self, url: str, path: str, count: int) -> int:
        """Open `count` streams to `url` + `path` across the workers; how many are open."""
        host, port = httpx.URL(url).host, httpx.URL(url).port
        n = len(self.pipes)
        shares = [count // n + (i < count % n) for i in range(n)]
        for pipe, share in zip(self.pipes, shares, strict=True):
            pipe.send(("open", host, port, path, share))
        failed = 0
        for pipe in self.pipes:
            n, error = pipe.recv()
            if n:
                say(f"clients: {n} streams failed to open, first: {error}")
            failed += n
        return count - failed

    def events(self) -> int:
        """Events read so far by every stream (duplicates included)."""
        for pipe in self.pipes:
            pipe.send(("count",))
        return sum(int(pipe.recv()) for pipe in self.pipes)

    def collect(self) -> dict[str, Any]:
        """Every stream's reads, merged; the streams are closed."""
        for pipe in self.pipes:
            pipe.send(("collect",))
        merged: dict[str, Any] = {"times": {}, "duplicates": 0, "resumes": 0, "closed_by_server": 0}
        for pipe in self.pipes:
            part = pipe.recv()
            for key, times in part.pop("times").items():
                merged["times"].setdefault(key, []).extend(times)
            for key, value in part.items():
                merged[key] += value
        return merged

    def cpu_s(self) -> float:
        """CPU seconds the workers have used so far."""
        return sum(cpu_seconds(p.pid) for p in self.procs if p.pid is not None)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit",))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# --- measuring ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of `pid` so far, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def rss_kb(pid: int) -> int:
    """Resident memory of `pid` in kB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        say(f"RLIMIT_NOFILE soft limit raised from {soft} to {target}")
        if target < needed:
            say(f"the hard limit {hard} is below the {needed} descriptors wanted")
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.2)


def drain(clients: Clients, expected: int, idle_s: float, limit_s: float) -> None:
    """Wait until the clients read `expected` events or nothing arrived for `idle_s`."""
    last, changed, began = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - began < limit_s:
        seen = clients.events()
        if seen >= expected:
            return
        if seen != last:
            last, changed = seen, time.monotonic()
        elif time.monotonic() - changed > idle_s:
            say(f"drain: {expected - seen} deliveries still missing after {idle_s:g}s idle")
            return
        time.sleep(0.25)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))]


@dataclass
class Phase:
    """One fan-out run: what was sent (id -> when) and what the clients read."""

    sent: dict[str, float]
    reads: dict[str, Any]
    streams: int
    began: float
    ended: float
    server_cpu_s: float
    clients_cpu_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def figures(self, warmup_s: float, prefix: str = "") -> dict[str, Any]:
        times: dict[str, list[float]] = self.reads["times"]
        latencies: list[float] = []
        # Split of the latency: to the first client that read the event (the pipeline),
        # then from that read to each other client's (the fan-out's own share).
        first: list[float] = []
        spread: list[float] = []
        in_window = 0
        start, end = self.began + warmup_s, self.ended
        for key, sent_at in self.sent.items():
            reads = times.get(key)
            if not reads:
                continue
            earliest = min(reads)
            first.append(earliest - sent_at)
            for at in reads:
                latencies.append(at - sent_at)
                spread.append(at - earliest)
                if start <= at <= end:
                    in_window += 1
        for values in (latencies, first, spread):
            values.sort()
        missing = sum(self.streams - len(times.get(key, ())) for key in self.sent)
        window = self.ended - self.began
        ms = [_ms(v) for v in _quantiles(latencies)]
        return {
            f"{prefix}deliveries_per_s": round(in_window / max(1e-9, end - start)),
            f"{prefix}offered_deliveries_per_s": round(len(self.sent) * self.streams / window),
            f"{prefix}deliver_p50_ms": ms[0],
            f"{prefix}deliver_p90_ms": ms[1],
            f"{prefix}deliver_p99_ms": ms[2],
            f"{prefix}deliver_max_ms": ms[3],
            f"{prefix}first_read_p50_ms": _ms(percentile(first, 50)),
            f"{prefix}first_read_p99_ms": _ms(percentile(first, 99)),
            f"{prefix}fanout_spread_p50_ms": _ms(percentile(spread, 50)),
            f"{prefix}fanout_spread_p99_ms": _ms(percentile(spread, 99)),
            f"{prefix}deliveries": len(latencies),
            f"{prefix}missing": missing,
            f"{prefix}duplicates": self.reads["duplicates"],
            f"{prefix}unexpected_events": len(set(times) - set(self.sent)),
            f"{prefix}streams_cut": self.reads["closed_by_server"],
            f"{prefix}resume_events": self.reads["resumes"],
            f"{prefix}server_cpu_pct": round(100 * self.server_cpu_s / window, 1),
            f"{prefix}clients_cpu_pct": round(100 * self.clients_cpu_s / window, 1),
            **{prefix + k: v for k, v in self.extra.items()},
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _quantiles(values: Sequence[float]) -> list[float | None]:
    return [percentile(values, q) for q in (50, 90, 99)] + [values[-1] if values else None]


# --- the poster ---------------------------------------------------------------------------


async def _post(url: str, rate: float, seconds: float) -> tuple[dict[str, float], dict[str, Any]]:
    """POST `rate` messages a second on an absolute schedule; id -> when the 202 arrived."""
    accepted: dict[str, float] = {}
    statuses: dict[str, int] = {}
    post_ms: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:

        async def one(i: int) -> None:
            began = time.monotonic()
            try:
                response = await http.post(
                    "/messages", json={"author": AUTHOR, "text": f"{TEXT} #{i}"}
                )
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                return
            done = time.monotonic()
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            if response.status_code == 202:
                accepted[response.json()["id"]] = done
                post_ms.append((done - began) * 1000)

        tasks: list[asyncio.Task[None]] = []
        began = time.monotonic()
        for i in range(round(rate * seconds)):
            await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    post_ms.sort()
    p50, _, p99, top = _quantiles(post_ms)
    return accepted, {
        "post_statuses": statuses,
        "post_p50_ms": None if p50 is None else round(p50, 1),
        "post_p99_ms": None if p99 is None else round(p99, 1),
        "post_max_ms": None if top is None else round(top, 1),
    }


# --- the two phases -----------------------------------------------------------------------


def subscribers_of(api_url: str) -> int:
    """The api's `feedsvc_feed_subscribers` gauge."""
    text = httpx.get(f"{api_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("feedsvc_feed_subscribers"):
            return int(float(line.split()[-1]))
    return 0


def open_streams(
    clients: Clients, url: str, count: int, pid: int, subscribed: Any
) -> tuple[int, int]:
    """Open the streams and let them settle; (streams open, RSS growth of `pid` in kB)."""
    time.sleep(1.0)
    rss_before = rss_kb(pid)
    say(f"opening {count} streams to {url}/feed")
    began = time.monotonic()
    opened = clients.open(url, "/feed?limit=0", count)
    if opened < count:
        raise SystemExit(f"bench: only {opened} of {count} streams opened")
    wait_until(lambda: subscribed() >= opened, 60, f"{opened} subscriptions")
    say(f"{opened} streams open in {time.monotonic() - began:.1f}s; idle 3s, then RSS")
    time.sleep(3.0)
    return opened, rss_kb(pid) - rss_before


def api_phase(
    clients: Clients, api: Service, api_url: str, args: argparse.Namespace, workdir: Path
) -> Phase:
    assert api.pid is not None
    pid = api.pid
    opened, grown = open_streams(
        clients, api_url, args.subscribers, pid, lambda: subscribers_of(api_url)
    )
    profiler = None
    if args.profile:
        profiler = subprocess.Popen(
            [
                *("uvx", "py-spy", "record", "--nonblocking", "-p", str(pid)),
                *("-d", str(int(args.seconds)), "-o", str(Path(args.profile).resolve())),
                # A .txt file gets collapsed stacks (one line per stack, for grep and diff).
                *(("--format", "raw") if args.profile.endswith(".txt") else ()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "py-spy.log").open("wb"),
        )
    say(f"feed: posting {args.rate:g}/s for {args.seconds:g}s to {opened} streams")
    cpu0, clients0, began = cpu_seconds(pid), clients.cpu_s(), time.monotonic()
    accepted, post = asyncio.run(_post(api_url, args.rate, args.seconds))
    ended = time.monotonic()
    cpu1, clients1 = cpu_seconds(pid), clients.cpu_s()
    say(f"feed: {len(accepted)} accepted; waiting for the deliveries")
    drain(clients, len(accepted) * opened, idle_s=10, limit_s=120)
    if profiler is not None:
        profiler.wait(60)
    return Phase(
        sent=accepted,
        reads=clients.collect(),
        streams=opened,
        began=began,
        ended=ended,
        server_cpu_s=cpu1 - cpu0,
        clients_cpu_s=clients1 - clients0,
        extra={
            "rss_per_conn_kb": round(grown / max(1, opened), 1),
            **post,
        },
    )


def baseline_phase(clients: Clients, args: argparse.Namespace, workdir: Path) -> Phase:
    with baseline_server("bench_feed_baseline.py", workdir, TEXT) as (server, url):
        assert server.pid is not None
        pid = server.pid

        def subscribed() -> int:
            return int(httpx.get(f"{url}/health", timeout=5).json()["subscribers"])

        opened, grown = open_streams(clients, url, args.subscribers, pid, subscribed)
        say(f"baseline: broadcasting {args.rate:g}/s for {args.seconds:g}s to {opened} streams")
        cpu0, clients0, began = cpu_seconds(pid), clients.cpu_s(), time.monotonic()
        httpx.post(
            f"{url}/broadcast", params={"rate": args.rate, "seconds": args.seconds}, timeout=5
        ).raise_for_status()
        time.sleep(max(0.0, began + args.seconds - time.monotonic()))
        ended = time.monotonic()
        cpu1, clients1 = cpu_seconds(pid), clients.cpu_s()
        sent = {k: float(t) for k, t in httpx.get(f"{url}/sent", timeout=30).json()}
        drain(clients, len(sent) * opened, idle_s=10, limit_s=120)
        sent = {k: float(t) for k, t in httpx.get(f"{url}/sent", timeout=30).json()}
        return Phase(
            sent=sent,
            reads=clients.collect(),
            streams=opened,
            began=began,
            ended=ended,
            server_cpu_s=cpu1 - cpu0,
            clients_cpu_s=clients1 - clients0,
            extra={"rss_per_conn_kb": round(grown / max(1, opened), 1)},
        )


def feed(args: argparse.Namespace) -> dict[str, Any]:
    # Each stream is a descriptor in the api and one in a client worker (all inherit this).
    limit = raise_fd_limit(2 * args.subscribers + 1024)
    warmup = min(2.0, args.seconds / 5)
    workdir = Path(tempfile.mkdtemp(prefix="feedsvc-bench-feed-"))
    clients = Clients(args.client_procs)
    try:
        env = {"FEED_MAX_SUBSCRIBERS": str(max(10_000, args.subscribers + 100))}
        with fresh_stack(
            "feedsvc-bench-stack-", roles=("writer", "changefeed", "api"), extra_env=env
        ) as stack:
            load_before = loadavg()
            api = api_phase(clients, stack.service("api"), stack.api_url, args, workdir)
        base = None
        if not args.no_baseline:
            base = baseline_phase(clients, args, workdir)
        load_after = loadavg()
    finally:
        clients.close()
        shutil.rmtree(workdir, ignore_errors=True)
    result: dict[str, Any] = {"subscribers": api.streams, **api.figures(warmup)}
    if base is not None:
        result.update(base.figures(warmup, "baseline_"))
    result["conditions"] = {
        **machine(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "seconds": args.seconds,
        "rate": args.rate,
        "subscribers_asked": args.subscribers,
        "steady_window": f"from {warmup:g}s after the first POST to the last POST",
        "client_processes": args.client_procs,
        "fd_limit": list(limit),
        "clients": "asyncio protocols on uvloop, separate processes (same machine)",
        "poster": "httpx, in the bench process, one task per POST on a fixed schedule",
        "processes": "1 api, 1 writer, changefeed stand-in, PostgreSQL, 1 Kafka broker",
        "latency": "api: POST 202 received -> event read; baseline: frame queued -> read",
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("feed", help="GET /feed fan-out against a fresh stack")
    run.add_argument("--subscribers", type=int, default=1000, help="open streams (1000)")
    run.add_argument("--rate", type=float, default=30.0, help="messages posted per second (30)")
    run.add_argument("--seconds", type=float, default=30.0, help="length of the posting (30)")
    run.add_argument("--client-procs", type=int, default=2, help="client processes (2)")
    run.add_argument("--no-baseline", action="store_true", help="skip the bare Litestar run")
    run.add_argument(
        "--profile",
        help="py-spy (uvx) the api while posting: a flame graph (.svg) or raw stacks (.txt)",
    )
    args = parser.parse_args(argv)
    print(json.dumps(feed(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
