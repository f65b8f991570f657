"""`fanout`: the highest post rate at which feed delivery p99 stays within 200 ms.

For each subscriber count (1,000 and 5,000): a fresh stack (writer, changefeed stand-in,
api), that many `GET /feed?limit=0` streams held by client worker processes, then trials
of posting at a steady rate (`bench.stats.search_rate`: doubling, then bisecting) until
the best rate whose delivery p99 (POST 202 received -> event read by a client) is within
the bound is found. The baseline, a bare Litestar `Stream` fan-out of pre-encoded frames
(`bench.baseline_feed`), is searched the same way with the same clients in the same run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from shutil import rmtree
from typing import Any

import httpx

from bench.feedstream import Clients
from bench.poster import TEXT, post_paced
from bench.proc import cpu_seconds, raise_fd_limit
from bench.report import loadavg, machine, say
from bench.result import Fanout, FanoutRun
from bench.stack import Stacks, baseline_server, metrics, pid_of
from bench.stats import Trial, ms, percentile, ratio, search_rate
from devstack import Stack
from devstack.poll import wait_settled, wait_until

BOUND_S = 0.200
"""Delivery p99 bound of the search (issue 12)."""


@dataclass(frozen=True)
class Options:
    """Subscriber counts, trial length and how many trials per search."""

    subscribers: tuple[int, ...] = (1000, 5000)
    trial_seconds: float = 10.0
    steps: int = 6
    start_rate: float = 10.0
    client_procs: int = 2

    @classmethod
    def make(cls, quick: bool, subscribers: list[int] | None = None) -> Options:
        """The defaults (short trials, fewer steps when `quick`)."""
        counts = tuple(subscribers or (1000, 5000))
        if quick:
            return cls(counts, trial_seconds=3.0, steps=3, start_rate=10.0)
        return cls(counts)


def figures(
    sent: Mapping[str, float], times: Mapping[str, list[float]], streams: int, window: float
) -> dict[str, Any]:
    """Delivery figures of one trial: rate, percentiles, missing; `sent` is id -> time."""
    latencies = [at - sent_at for key, sent_at in sent.items() for at in times.get(key, ())]
    missing = sum(streams - len(times.get(key, ())) for key in sent)
    return {
        "deliveries_per_s": round(len(latencies) / window) if window > 0 else 0,
        "deliver_p50_ms": ms(percentile(latencies, 50)),
        "deliver_p99_ms": ms(percentile(latencies, 99)),
        "missing": missing,
    }


def _trial(
    clients: Clients,
    expected_streams: int,
    rate: float,
    seconds: float,
    send: Callable[[], Any],
    server_cpu: Callable[[], float],
) -> dict[str, Any]:
    """Run `send` (posts or broadcasts for `seconds`), drain the clients, figures.

    Note: `cpu_us_per_delivery` is the server's CPU (all its processes) from the start of
    the trial until the clients have read everything, over the deliveries read;
    `client_cpu_us_per_delivery` the same for the client processes (on the same cores).
    """
    began, cpu_before, clients_before = time.monotonic(), server_cpu(), clients.cpu_s()
    sent, extra = send()
    window = max(seconds, time.monotonic() - began)
    wait_settled(clients.events, len(sent) * expected_streams, idle_s=5, limit_s=60)
    cpu, clients_cpu = server_cpu() - cpu_before, clients.cpu_s() - clients_before
    reads = clients.collect(close=False)
    out = {"rate": rate, **figures(sent, reads["times"], expected_streams, window), **extra}
    delivered = sum(len(reads["times"].get(key, ())) for key in sent)
    out["cpu_us_per_delivery"] = round(cpu * 1e6 / delivered, 1) if delivered else None
    out["client_cpu_us_per_delivery"] = (
        round(clients_cpu * 1e6 / delivered, 1) if delivered else None
    )
    out["duplicates"] = reads["duplicates"]
    return out


def _open(clients: Clients, url: str, count: int, subscribed: Callable[[], int]) -> None:
    # Reconnecting: a stream cut for falling behind resumes, as a browser's would.
    opened = clients.open(url, "/feed?limit=0", count, reconnect=True)
    if opened < count:
        raise RuntimeError(f"only {opened} of {count} streams opened")
    wait_until(lambda: subscribed() >= count, 60, f"{count} subscriptions")


@dataclass(frozen=True)
class _Server:
    """What a search needs of the server under test: where it is, how many streams it
    holds, how to send at a rate (`send(rate)()` gives what was sent and extra figures),
    and the process whose CPU (with its children's) is the server's."""

    url: str
    subscribed: Callable[[], int]
    send: Callable[[float], Callable[[], Any]]
    pid: int


def _search(
    clients: Clients, count: int, opts: Options, server: _Server
) -> tuple[Trial[dict[str, Any]] | None, list[Trial[dict[str, Any]]]]:
    _open(clients, server.url, count, server.subscribed)
    send = server.send

    def server_cpu() -> float:
        return cpu_seconds(server.pid)

    def measure(rate: float) -> tuple[bool, dict[str, Any]]:
        out = _trial(clients, count, rate, opts.trial_seconds, send(rate), server_cpu)
        p99 = out["deliver_p99_ms"]
        ok = p99 is not None and p99 <= BOUND_S * 1000 and out["missing"] == 0
        say(
            f"  {rate:g}/s x {count}: {out['deliveries_per_s']}/s, p99 {p99} ms, "
            f"CPU per delivery {out['cpu_us_per_delivery']} us "
            f"(clients {out['client_cpu_us_per_delivery']} us), ok={ok}"
        )
        return ok, out

    try:
        return search_rate(measure, opts.start_rate, opts.steps)
    finally:
        clients.collect()  # closes the streams


def _api(clients: Clients, count: int, opts: Options, stack: Stack) -> Any:
    url, api = stack.api_url, pid_of(stack, "api")

    def subscribed() -> int:
        return int(metrics(url).get("feedsvc_feed_subscribers", 0))

    def send(rate: float) -> Callable[[], Any]:
        def go() -> Any:
            poster = post_paced(url, rate, opts.trial_seconds)
            p99 = percentile(poster.latencies_s(), 99)
            return poster.accepted, {"post_p99_ms": ms(p99), "statuses": poster.statuses()}

        return go

    say(f"fanout: api, {count} subscribers")
    return _search(clients, count, opts, _Server(url, subscribed, send, api))


def _baseline(clients: Clients, count: int, opts: Options, workdir: Path) -> Any:
    with baseline_server("baseline_feed", workdir, TEXT) as (server, url):
        pid = server.pid
        assert pid is not None

        def subscribed() -> int:
            return int(httpx.get(f"{url}/health", timeout=5).json()["subscribers"])

        def send(rate: float) -> Callable[[], Any]:
            def go() -> Any:
                httpx.post(
                    f"{url}/broadcast",
                    params={"rate": rate, "seconds": opts.trial_seconds},
                    timeout=5,
                ).raise_for_status()
                time.sleep(opts.trial_seconds + 0.5)
                sent = {k: float(t) for k, t in httpx.get(f"{url}/sent", timeout=30).json()}
                return sent, {}

            return go

        say(f"fanout: baseline, {count} subscribers")
        return _search(clients, count, opts, _Server(url, subscribed, send, pid))


def run(opts: Options, stacks: Stacks | None = None) -> Fanout:
    """Search the api's and the baseline's best rate at each subscriber count."""
    fd_limit = raise_fd_limit(2 * max(opts.subscribers) + 2048)
    workdir = Path(tempfile.mkdtemp(prefix="feedsvc-bench-"))
    load_before = loadavg()
    runs: list[FanoutRun] = []
    try:
        env = {"FEED_MAX_SUBSCRIBERS": str(max(opts.subscribers) + 1000)}
        with (
            (stacks or Stacks()).get(("writer", "changefeed", "api"), env) as stack,
            Clients(opts.client_procs) as clients,
        ):
            for count in opts.subscribers:
                best, trials = _api(clients, count, opts, stack)
                base_best, base_trials = _baseline(clients, count, opts, workdir)
                got = best.outcome if best else {}
                base = base_best.outcome if base_best else {}
                runs.append(
                    FanoutRun(
                        subscribers=count,
                        deliveries_per_s=got.get("deliveries_per_s"),
                        deliver_p50_ms=got.get("deliver_p50_ms"),
                        deliver_p99_ms=got.get("deliver_p99_ms"),
                        post_p99_ms=got.get("post_p99_ms"),
                        baseline_deliveries_per_s=base.get("deliveries_per_s"),
                        ratio_to_baseline=ratio(
                            got.get("deliveries_per_s"), base.get("deliveries_per_s")
                        ),
                        posts_per_s=best.rate if best else None,
                        api_cpu_us_per_delivery=got.get("cpu_us_per_delivery"),
                        baseline_cpu_us_per_delivery=base.get("cpu_us_per_delivery"),
                        missing=sum(t.outcome["missing"] for t in trials),
                        duplicates=sum(t.outcome["duplicates"] for t in trials),
                        trials=[t.outcome for t in trials],
                        baseline_trials=[t.outcome for t in base_trials],
                    )
                )
    finally:
        rmtree(workdir, ignore_errors=True)
    return Fanout(
        runs=runs,
        conditions={
            **machine(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "trial_seconds": opts.trial_seconds,
            "search": f"from {opts.start_rate:g} posts/s, doubling then bisecting, "
            f"at most {opts.steps} trials; best trial with p99 <= 200 ms and none missing",
            "fd_limit": fd_limit,
            "client_processes": opts.client_procs,
            "latency": "api: POST 202 received -> event read; baseline: frame queued -> read",
            "missing": "deliveries not read in all trials (trials above the bound included)",
            "processes": "1 api, 1 writer, changefeed stand-in, PostgreSQL, 1 Kafka broker",
        },
    )
