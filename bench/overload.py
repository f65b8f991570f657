"""`overload`: POSTs offered at 10x the sustainable rate; what is refused, how fast, and lost.

The sustainable rate is measured first in the same run (wrk as fast as the api answers,
like `ingest`) unless given. wrk then offers ten times that, paced, on many connections;
beside it a light sampler posts a few times a second and times each answer, since wrk's
latency figures do not tell a 429 from a 202. The writer's backlog is read from the api's
`/metrics` (`feedsvc_writer_backlog`) throughout. Lost: accepted (202) and not stored.

A polite client posts once every 0.2 s from another loopback address during the flood:
its acceptance and p99 are measured without the proxy's per-address limits, then (on the
proxy path, on a fresh stack) with them at their shipped defaults (docs/fair-share.md).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from shutil import rmtree

import msgspec

from bench.gauge import BacklogWatch
from bench.poster import Poster
from bench.proc import raise_fd_limit
from bench.report import loadavg, machine, say
from bench.result import Overload, Polite
from bench.stack import Stacks, stored_count, stored_ids
from bench.stats import ms, percentile
from bench.wrk import Load
from devstack.poll import wait_settled
from devstack.proxy import config_default

RAMP_S = 5.0
"""Seconds at the start of the overload left out of `reject_p99_ms` (reported apart): wrk
opens all its connections and sends at once, and the first answers queue behind that
burst for seconds (up to ~15 s seen on a loaded machine), before refusals settle."""

POLITE_RATE = 5.0
"""The polite client's POSTs per second: one every 0.2 s, as issue 18's."""
POLITE_SOURCE = "127.0.0.2"
"""Its address: not the flood's (wrk connects from 127.0.0.1)."""
PER_ADDRESS = ("FEEDSVC_PROXY_POST_RATE", "FEEDSVC_PROXY_POST_INFLIGHT")
"""The proxy's posting limits, set to their shipped defaults for the run with them."""

BACKLOG_LIMIT = 20_000
"""FEED_MAX_BACKLOG for this scenario: low enough that a writer falling behind reaches it
within the run (the shipped default, 100,000, takes minutes to reach at these rates)."""


@dataclass(frozen=True)
class Options:
    """How long to overload, and the sustainable rate if known.

    Note: wrk keeps one request in flight per connection, so it offers more than the api
    answers only with more connections than the api's in-flight limit (FEED_MAX_INFLIGHT,
    128 per worker): below that, the load is closed-loop and nothing is ever refused.
    """

    seconds: float = 30.0
    probe_seconds: float = 10.0
    sustainable: int = 0
    connections: int = 1000

    @classmethod
    def make(cls, quick: bool, sustainable: int = 0) -> Options:
        """The defaults (20 s of overload when `quick`)."""
        if quick:
            return cls(seconds=20.0, probe_seconds=5.0, sustainable=sustainable)
        return cls(sustainable=sustainable)


def run(opts: Options, stacks: Stacks | None = None) -> Overload:
    """The overload without per-address limits; then, on the proxy path, with them."""
    first = _run(opts, stacks, per_address=False)
    path = stacks.path if stacks is not None else "proxy"
    if path != "proxy" or (stacks is not None and stacks.shared):
        return first  # no proxy; or one shared stack, whose limits are lifted
    limited = replace(opts, sustainable=first.sustainable_per_s)
    second = _run(limited, Stacks(path=path), per_address=True)
    return msgspec.structs.replace(first, polite=[*first.polite, *second.polite])


def _run(opts: Options, stacks: Stacks | None, *, per_address: bool) -> Overload:
    """Measure the sustainable rate (unless given), then offer ten times it."""
    raise_fd_limit(opts.connections + 4096)
    workdir = Path(tempfile.mkdtemp(prefix="feedsvc-bench-"))
    shared = stacks is not None and stacks.shared
    env = {"FEED_MAX_BACKLOG": str(BACKLOG_LIMIT)}
    if per_address:
        env |= {name: config_default(name) for name in PER_ADDRESS}
    try:
        with (stacks or Stacks()).get(("writer", "api"), env) as stack:
            load_before = loadavg()
            sustainable = opts.sustainable
            base_rows = stored_count(stack.database_url)
            probe_ids: list[str] = []
            if not sustainable:
                say(f"overload: measuring the sustainable rate for {opts.probe_seconds:g}s")
                probe = Load(stack.api_url, opts.probe_seconds).run(workdir)
                sustainable = max(1, round(len(probe.ids) / probe.duration_s))
                probe_ids = probe.ids
            offered = 10 * sustainable
            say(f"overload: offering {offered}/s (10 x {sustainable}) for {opts.seconds:g}s")
            sampler = Poster(stack.api_url, 20.0, author="bench_sampler").background()
            polite = Poster(
                stack.api_url, POLITE_RATE, author="bench_polite", source=POLITE_SOURCE
            ).background()
            began = time.monotonic()
            with BacklogWatch(stack.api_url) as backlog:
                load = Load(stack.api_url, opts.seconds, offered, opts.connections, threads=2).run(
                    workdir
                )
            sampler.stop()
            polite.stop()
            load_after = loadavg()
            accepted = [*probe_ids, *load.ids, *sampler.accepted, *polite.accepted]
            say(f"overload: {len(accepted)} accepted in all; waiting for the writer")
            wait_settled(
                lambda: stored_count(stack.database_url) - base_rows, len(accepted), 15, 180
            )
            stored = set(stored_ids(stack.database_url))
    finally:
        rmtree(workdir, ignore_errors=True)
    rejects_all = [a for a in sampler.answers if a.status in ("429", "503")]
    rejects = [a.latency_s for a in rejects_all if a.sent >= began + RAMP_S]
    statuses = dict(load.statuses)
    politely = polite.statuses()
    polite_after_ramp = [a.latency_s for a in polite.answers if a.sent >= began + RAMP_S]
    return Overload(
        offered_per_s=round((load.answered + int(load.result["errors"])) / load.duration_s),
        accepted_per_s=round(len(load.ids) / load.duration_s),
        rejected_429=statuses.get("429", 0),
        rejected_503=statuses.get("503", 0),
        reject_p99_ms=ms(percentile(rejects, 99)),
        max_backlog=backlog.max,
        backlog_limit=BACKLOG_LIMIT,
        lost=len(set(accepted) - stored),
        sustainable_per_s=sustainable,
        statuses=statuses,
        polite=[
            Polite(
                per_address_limits=per_address,
                sent=len(polite.answers),
                accepted_pct=round(100 * politely.get("202", 0) / len(polite.answers), 1)
                if polite.answers
                else None,
                p99_ms=ms(percentile(polite.latencies_s(None), 99)),
                p99_ms_after_ramp=ms(percentile(polite_after_ramp, 99)),
                statuses=politely,
                flood_accepted_per_s=round(len(load.ids) / load.duration_s),
                flood_rejected_429=statuses.get("429", 0),
                lost=len(set(accepted) - stored),
                loadavg=[list(load_before), list(load_after)],
            )
        ],
        conditions={
            "per_address_limits": {name: env.get(name, "lifted") for name in PER_ADDRESS},
            "polite": f"{POLITE_RATE:g}/s from {POLITE_SOURCE}, the flood (wrk, sampler) "
            "from 127.0.0.1; p99 of every answer it got during the flood",
            **machine(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "seconds": opts.seconds,
            "target_offered_per_s": 10 * sustainable,
            "connections": opts.connections,
            "offered_per_s": "requests wrk completed or saw fail, per second (paced at 10x, "
            "2 threads; wrk cannot offer more than its connections allow)",
            "reject_p99_ms": "from a 20/s httpx sampler beside wrk: its 429 and 503 answers "
            f"to POSTs sent after the first {RAMP_S:g} s of the overload",
            "reject_p99_ms_including_ramp": ms(percentile([a.latency_s for a in rejects_all], 99)),
            "sampler_statuses": sampler.statuses(),
            "sampler_rejects": len(rejects),
            "sampler_p99_ms_any_answer": ms(percentile(sampler.latencies_s(None), 99)),
            "backlog_reads": backlog.reads,
            "backlog_reads_without_gauge": backlog.failed,
            "wrk_errors": load.result.get("errors"),
            "processes": "1 api, 1 writer, PostgreSQL, 1 Kafka broker; "
            + (
                "changefeed stand-in (one stack shared by every scenario)"
                if shared
                else "no changefeed"
            ),
        },
    )
