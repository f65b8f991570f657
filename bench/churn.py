"""`churn`: streams leaving and joining at a steady rate among N idle ones, at several N.

DESIGN's guarantee: a stream joining or leaving costs the same whether 10 or 40,000
streams are open (ARCHITECTURE.md#slow-clients). For each N (1,000, 10,000 and 36,000 by
default), on one stack: the streams are opened up
to N (`GET /feed?limit=0`, held by client processes as in `idle`), the api's CPU is read
over a window with nothing happening (heartbeats only), then over a window of the same
length in which the clients close their oldest stream and open a new one `rate` times a
second (a leave and a join each: mobile churn). The figure is the api's CPU per
leave+join, the idle window's CPU rate subtracted, so heartbeats and the relay's polling
are not counted; `ratio_to_first` compares it with the first N's.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.feedstream import Clients
from bench.idle import source_addresses
from bench.proc import cpu_seconds, raise_fd_limit, tree
from bench.report import loadavg, machine, say
from bench.result import Churn, ChurnRun
from bench.sockets import connections as held_by
from bench.stack import Stacks, pid_of
from devstack.poll import Timeout, wait_until

PATH = "/feed?limit=0"
"""No history: a join is the subscription alone, not a database read (O(1) in N anyway)."""


@dataclass(frozen=True)
class Options:
    """The stream counts, the leave+join rate, and each window's length."""

    streams: tuple[int, ...] = (1_000, 10_000, 36_000)
    """The largest is the most this machine churns: `idle` holds ~39,900, each api worker at
    its hard limit of 20,000 files, where a join is refused until a leave frees a file
    (107 of 1,500 joins failed at 39,892 streams): 36,000 leave each worker ~2,000 spare."""
    rate: float = 50.0
    window_s: float = 30.0
    batch: int = 5_000
    client_procs: int = 3

    @classmethod
    def make(
        cls,
        quick: bool,
        streams: list[int] | None = None,
        rate: float = 0.0,
        seconds: float = 0.0,
    ) -> Options:
        """The defaults (1,000 and 4,000 streams, 10 s windows when `quick`)."""
        counts = tuple(sorted(streams or ((1_000, 4_000) if quick else cls.streams)))
        window = seconds or (10.0 if quick else cls.window_s)
        # A client process holds its share of the sockets under its own file limit.
        procs = max(2, math.ceil(counts[-1] / 15_000))
        return cls(counts, rate or cls.rate, window, client_procs=procs)


def _held_once(subscribed: Callable[[], int], count: int) -> int:
    """How many streams the api holds once it holds `count` (or after two minutes)."""
    try:
        wait_until(lambda: subscribed() >= count, 120, f"{count} subscriptions")
    except Timeout as exc:
        say(f"churn: {exc}; {subscribed()} subscribed")
    return subscribed()


def run(opts: Options, stacks: Stacks | None = None) -> Churn:
    """Open up to each N in turn; at each, the idle window, then the churn window."""
    largest = opts.streams[-1]
    fd_limit = raise_fd_limit(largest + 4096)
    addrs = source_addresses(largest)
    env = {"FEED_MAX_SUBSCRIBERS": str(largest + 1000)}
    load_before = loadavg()
    runs: list[ChurnRun] = []
    with (
        (stacks or Stacks()).get(("writer", "changefeed", "api"), env) as stack,
        Clients(opts.client_procs) as clients,
    ):
        url, api = stack.api_url, pid_of(stack, "api")
        # Streams are counted where the api holds them: its own port, behind any proxy.
        port = int(stack.replica_url().rsplit(":", 1)[1])

        def subscribed() -> int:
            return sum(held_by(tree(api), port).values())

        opened = 0
        for n in opts.streams:
            while opened < n:
                want = min(opts.batch, n - opened)
                got = clients.open(url, PATH, want, local_addrs=addrs)
                opened += got
                say(f"churn: {opened} streams open")
                if got < want:
                    break
            held = _held_once(subscribed, opened)
            time.sleep(3.0)
            say(f"churn: {held} held; idle for {opts.window_s:g}s")
            cpu0, t0 = cpu_seconds(api), time.monotonic()
            time.sleep(opts.window_s)
            idle_cpu, idle_s = cpu_seconds(api) - cpu0, time.monotonic() - t0
            say(f"churn: {opts.rate:g} leave+join/s for {opts.window_s:g}s")
            cpu0, t0 = cpu_seconds(api), time.monotonic()
            done, failed = clients.churn(url, PATH, opts.rate, opts.window_s)
            churn_cpu, churn_s = cpu_seconds(api) - cpu0, time.monotonic() - t0
            extra = churn_cpu - idle_cpu / idle_s * churn_s
            per_op = round(1e6 * extra / done, 1) if done else None
            first = runs[0].api_cpu_us_per_leave_join if runs else per_op
            runs.append(
                ChurnRun(
                    streams=n,
                    held=held,
                    leave_joins=done,
                    failed=failed,
                    rate_per_s=round(done / churn_s, 1),
                    api_cpu_us_per_leave_join=per_op,
                    churn_cpu_pct=round(100 * churn_cpu / churn_s, 2),
                    idle_cpu_pct=round(100 * idle_cpu / idle_s, 2),
                    ratio_to_first=round(per_op / first, 2) if per_op and first else None,
                )
            )
            say(f"churn: at {held} streams {per_op} µs of api CPU per leave+join")
            opened = opened - failed  # a failed join leaves one stream fewer
    return Churn(
        runs=runs,
        conditions={
            **machine(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "rate_per_s": opts.rate,
            "window_s": opts.window_s,
            "path": PATH,
            "api_cpu_us_per_leave_join": "the api's CPU (every worker) over the churn window "
            "less its CPU rate over the idle window just before at the same N times the "
            "churn window's length, per leave+join whose new stream opened",
            "churn": "each client process closes its oldest stream (an abort) and opens a "
            "new one in its place, at its share of the rate; the streams are idle "
            "(nothing posted): a leave or join costs only itself and what it wakes",
            "ratio_to_first": "api_cpu_us_per_leave_join against the first N's",
            "source_addresses": addrs,
            "fd_limit": fd_limit,
            "fd_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            "client_processes": opts.client_procs,
            "processes": "1 api (its default workers), 1 writer, changefeed stand-in, "
            "PostgreSQL, 1 Kafka broker; the clients on the same cores",
        },
    )
