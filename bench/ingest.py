"""`ingest`: POST throughput, latency and CPU per post of a fresh stack, beside the bare handler.

Loads the api with wrk, keeps every id answered with 202, waits for the writer to store
them and reports accepted and stored rates, lost and duplicated ids, POST latency, and the
api's CPU per accepted post. The baseline, a bare Litestar handler that only validates the
same body (`bench.baseline_ingest`), is loaded the same way in the same run. The
changefeed stand-in is left out: it is CockroachDB's work in production. Through the
proxy (the default path), the same load then goes straight to the api too, and the
proxy's cost is reported beside it (`conditions.proxy_cost`).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from shutil import rmtree

from bench.proc import cpu_seconds
from bench.report import loadavg, machine, say
from bench.result import Ingest
from bench.stack import Stacks, baseline_server, describe, pid_of, stored_count, stored_ids
from bench.stats import ratio
from bench.wrk import Load
from devstack.poll import wait_settled


@dataclass(frozen=True)
class Options:
    """How long and how hard to load."""

    seconds: float = 60.0
    baseline_seconds: float = 20.0
    rate: int = 0
    connections: int = 64
    workers: int = 0
    """FEED_API_WORKERS for the api; 0: its default, one per core."""

    @classmethod
    def make(
        cls,
        quick: bool,
        seconds: float | None = None,
        rate: int = 0,
        connections: int = 64,
        workers: int = 0,
    ) -> Options:
        """The defaults, shortened by `quick`, with the command line's choices."""
        base = cls(seconds=10.0, baseline_seconds=5.0) if quick else cls()
        return cls(seconds or base.seconds, base.baseline_seconds, rate, connections, workers)


def run(opts: Options, stacks: Stacks | None = None) -> Ingest:
    """Start a stack, measure the baseline then the api; the result."""
    workdir = Path(tempfile.mkdtemp(prefix="feedsvc-bench-"))
    stacks = stacks or Stacks()
    shared = stacks.shared
    proxy_cost: dict[str, float | int | None] | None = None
    try:
        env = {"FEED_API_WORKERS": str(opts.workers)} if opts.workers else None
        with stacks.get(("writer", "api"), env) as stack:
            load_before = loadavg()
            say(f"ingest: baseline, bare Litestar handler for {opts.baseline_seconds:g}s")
            with baseline_server("baseline_ingest", workdir) as (server, url):
                assert server.pid is not None
                cpu0 = cpu_seconds(server.pid)
                base = Load(url, opts.baseline_seconds, opts.rate, opts.connections).run(workdir)
                base_cpu = cpu_seconds(server.pid) - cpu0
            say(f"ingest: {opts.seconds:g}s at {opts.rate or 'full'} posts/s")
            api = pid_of(stack, "api")
            db = stack.database_url
            base_rows = stored_count(db)
            proxy = pid_of(stack, "proxy") if stacks.path == "proxy" else None
            proxy_cpu0 = cpu_seconds(proxy) if proxy else 0.0
            began, cpu0 = time.monotonic(), cpu_seconds(api)
            load = Load(stack.api_url, opts.seconds, opts.rate, opts.connections).run(workdir)
            api_cpu = cpu_seconds(api) - cpu0
            proxy_cpu = cpu_seconds(proxy) - proxy_cpu0 if proxy else 0.0
            load_after = loadavg()
            accepted = len(load.ids)
            say(f"ingest: {accepted} accepted; waiting for the writer to store them")
            _, stored_at = wait_settled(lambda: stored_count(db) - base_rows, accepted, 15, 120)
            stored = stored_ids(db)
            if proxy:
                say(f"ingest: the same {opts.seconds:g}s straight to the api, for the proxy's cost")
                cpu0 = cpu_seconds(api)
                direct = Load(stack.replica_url(), opts.seconds, opts.rate, opts.connections).run(
                    workdir
                )
                direct_cpu = cpu_seconds(api) - cpu0
                proxy_cost = {
                    "direct_accepted_per_s": round(len(direct.ids) / direct.duration_s),
                    "direct_post_p50_ms": direct.latency_ms("p50"),
                    "direct_post_p99_ms": direct.latency_ms("p99"),
                    "direct_api_cpu_us_per_post": round(1e6 * direct_cpu / len(direct.ids), 1)
                    if direct.ids
                    else None,
                    "proxy_cpu_us_per_post": round(1e6 * proxy_cpu / len(load.ids), 1)
                    if load.ids
                    else None,
                }
    finally:
        rmtree(workdir, ignore_errors=True)
    stored_set, accepted_set = set(stored), set(load.ids)
    # Rows new in this run (a shared stack holds earlier scenarios' rows too), including
    # those whose 202 wrk did not read because the load ended while they were in flight.
    new_rows = len(stored_set) - base_rows
    stored_per_s = round(new_rows / max(stored_at - began, load.duration_s))
    base_rate = round(base.answered / base.duration_s)
    return Ingest(
        accepted_per_s=round(accepted / load.duration_s),
        stored_per_s=stored_per_s,
        post_p50_ms=load.latency_ms("p50"),
        post_p99_ms=load.latency_ms("p99"),
        lost=len(accepted_set - stored_set),
        duplicates=(accepted - len(accepted_set)) + (len(stored) - len(stored_set)),
        baseline_post_per_s=base_rate,
        ratio_to_baseline=ratio(stored_per_s, base_rate),
        api_cpu_us_per_post=round(1e6 * api_cpu / accepted, 1) if accepted else None,
        baseline_cpu_us_per_request=round(1e6 * base_cpu / base.answered, 1)
        if base.answered
        else None,
        accepted=accepted,
        stored=len(accepted_set & stored_set),
        statuses=dict(load.statuses),
        conditions={
            **machine(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "seconds": opts.seconds,
            "baseline_seconds": opts.baseline_seconds,
            "target_rate": opts.rate or None,
            "connections": opts.connections,
            "post_p99_ms_baseline": base.latency_ms("p99"),
            "stored_unacknowledged": new_rows - len(accepted_set & stored_set),
            "stored_per_s": "stored rows over max(load, load start to the last row stored)",
            "load_generator": "wrk, 1 thread (same machine)",
            "path": describe(stacks.path),
            "proxy_cost": proxy_cost,
            "api_workers": opts.workers or "one per core",
            "processes": "1 api, 1 writer, PostgreSQL, 1 Kafka broker; "
            + (
                "changefeed stand-in (one stack shared by every scenario)"
                if shared
                else "no changefeed"
            ),
        },
    )
