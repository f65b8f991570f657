"""`idle`: as many idle feed connections as the api holds (up to 40,000), and their cost.

The api runs its default worker processes (one per core, FEED_API_WORKERS), each holding
its share of the streams: a process cannot hold more sockets than its file limit, and
the hard limit (20,000 on the machine of BENCHMARKS.md) can be raised only with
CAP_SYS_RESOURCE, so one worker alone stops near it. How many each worker holds is read
from /proc (bench/sockets.py), not from /metrics, which answers for one worker only.
The scenario sets up what that many loopback sockets need: a raised RLIMIT_NOFILE (the
stack's processes inherit it), client processes of 15,000 sockets each, and several
source addresses (127.0.0.1, 127.0.0.2, ...),
since one source address has only ~28,000 ephemeral ports towards one server port.
Streams open in batches until the target or the first batch that fails. Then: the api's
resident memory growth per connection, its CPU over a window of heartbeats (one every
`FEED_HEARTBEAT_S`, 15 s) with nothing posted, and POST latency at a low rate while all
are open (each post is then delivered to every connection).
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass

from bench.feedstream import Clients
from bench.poster import post_paced
from bench.proc import cpu_seconds, raise_fd_limit, rss_kb, tree
from bench.report import loadavg, machine, say
from bench.result import Idle
from bench.sockets import connections as held_by
from bench.stack import Stacks, pid_of
from bench.stats import ms, percentile
from devstack.poll import Timeout, wait_until

PORTS_PER_ADDRESS = 20_000
"""Connections per source address: below net.ipv4.ip_local_port_range's ~28,000 ports."""


@dataclass(frozen=True)
class Options:
    """How many connections to try, in what batches, and how long to watch heartbeats."""

    connections: int = 40_000
    batch: int = 5_000
    heartbeat_window_s: float = 31.0
    post_rate: float = 5.0
    post_seconds: float = 6.0
    client_procs: int = 2

    @classmethod
    def make(cls, quick: bool, connections: int = 0) -> Options:
        """The defaults (4,000 connections and one heartbeat period when `quick`)."""
        if quick:
            return cls(connections or 4_000, 2_000, heartbeat_window_s=16.0, post_seconds=4.0)
        wanted = connections or 40_000
        # A client process holds its share of the sockets under its own file limit.
        return cls(wanted, client_procs=max(2, math.ceil(wanted / 15_000)))


def source_addresses(connections: int) -> list[str]:
    """Enough loopback source addresses for `connections` sockets to one server port."""
    count = max(1, math.ceil(connections / PORTS_PER_ADDRESS))
    return [f"127.0.0.{i}" for i in range(1, count + 1)]


def run(opts: Options, stacks: Stacks | None = None) -> Idle:
    """Open the connections, then measure memory, heartbeat CPU and POST latency."""
    # Each stream is a descriptor in the api and one in a client worker (all inherit this).
    fd_limit = raise_fd_limit(opts.connections + 4096)
    addrs = source_addresses(opts.connections)
    env = {"FEED_MAX_SUBSCRIBERS": str(opts.connections + 1000)}
    load_before = loadavg()
    with (
        (stacks or Stacks()).get(("writer", "changefeed", "api"), env) as stack,
        Clients(opts.client_procs) as clients,
    ):
        url, api = stack.api_url, pid_of(stack, "api")
        # Streams are counted where the api holds them: its own port, behind any proxy.
        port = int(stack.replica_url().rsplit(":", 1)[1])

        def per_worker() -> dict[int, int]:
            # The api's processes: its workers, or the api itself when it runs alone.
            return held_by(tree(api), port)

        def subscribed() -> int:
            return sum(per_worker().values())

        time.sleep(1.0)
        rss_before = rss_kb(api)
        # What the api costs with no stream open, over the same window: the share of the
        # heartbeat figure that is not heartbeats (relay polling, resolved records, gauges).
        cpu0, t0 = cpu_seconds(api), time.monotonic()
        time.sleep(opts.heartbeat_window_s)
        idle_pct = 100 * (cpu_seconds(api) - cpu0) / (time.monotonic() - t0)
        opened = 0
        while opened < opts.connections:
            want = min(opts.batch, opts.connections - opened)
            got = clients.open(url, "/feed?limit=0", want, local_addrs=addrs)
            opened += got
            say(f"idle: {opened} streams open")
            if got < want:
                break
        try:
            wait_until(lambda: subscribed() >= opened, 120, f"{opened} subscriptions")
        except Timeout as exc:
            say(f"idle: {exc}; {subscribed()} subscribed")
        held = subscribed()
        held_per_worker = sorted(n for n in per_worker().values() if n)
        time.sleep(3.0)
        grown = rss_kb(api) - rss_before
        say(f"idle: {held} held; heartbeats for {opts.heartbeat_window_s:g}s")
        cpu0, t0 = cpu_seconds(api), time.monotonic()
        time.sleep(opts.heartbeat_window_s)
        heartbeat_pct = 100 * (cpu_seconds(api) - cpu0) / (time.monotonic() - t0)
        say(f"idle: posting {opts.post_rate:g}/s for {opts.post_seconds:g}s")
        poster = post_paced(url, opts.post_rate, opts.post_seconds)
        still = subscribed()
    return Idle(
        connections=held,
        rss_per_conn_kb=round(grown / held, 1) if held else None,
        heartbeat_cpu_pct=round(heartbeat_pct, 2),
        post_p99_ms=ms(percentile(poster.latencies_s(), 99)),
        asked=opts.connections,
        conditions={
            **machine(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "source_addresses": addrs,
            "fd_limit": fd_limit,
            "fd_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            "fd_note": "the api holds one descriptor per connection: it cannot hold more "
            "than the file limit, which only a process with CAP_SYS_RESOURCE can raise "
            "above the hard limit",
            "heartbeat_window_s": opts.heartbeat_window_s,
            "heartbeat_cpu_pct": "api CPU over the window, nothing posted (idle api included)",
            "idle_api_cpu_pct": round(idle_pct, 2),
            "idle_api_cpu_pct_note": "api CPU over the same window before any stream opened",
            "rss_per_conn_kb": "api RSS growth from before opening to 3 s after, per held conn",
            "post_rate": opts.post_rate,
            "post_statuses": poster.statuses(),
            "subscribed_after_posts": still,
            "client_processes": opts.client_procs,
            "held_per_worker": held_per_worker,
            "connections": "established /feed connections held by the api's processes "
            "(/proc), every worker together",
            "processes": f"1 api ({len(held_per_worker)} worker(s) holding streams), 1 writer, "
            "changefeed stand-in, PostgreSQL, 1 Kafka broker",
        },
    )
