"""`resume`: a reconnect storm. Clients drop together and resume 5,000 events behind.

1,000 streams open and read a first few messages (so each holds an event id); all drop
at once; 5,000 messages are posted and stored while they are away; then all reconnect at
once with `Last-Event-ID` (the last id each read, an opaque string) while posts go on at
a steady rate. Catch-up: from the reconnect until every client has read every message
accepted before it. Gaps: messages accepted during the run that a client never read;
duplicates: messages a client read twice. The api's Kafka consumers are read from
`/metrics` during the storm when it exposes a gauge for them.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.feedstream import Clients
from bench.gauge import GaugeWatch, gauge
from bench.poster import Poster, post_paced
from bench.proc import raise_fd_limit
from bench.report import loadavg, machine, say
from bench.result import Resume
from bench.stack import Stacks, stored_count
from bench.wrk import Load
from devstack.poll import Timeout, wait_settled, wait_until


@dataclass(frozen=True)
class Options:
    """How many clients, how far behind, how fast the posts go on."""

    clients: int = 1000
    behind: int = 5000
    behind_rate: float = 1000.0
    live_rate: float = 20.0
    catch_up_limit_s: float = 120.0
    client_procs: int = 2

    @classmethod
    def make(cls, quick: bool) -> Options:
        """The defaults (2,000 events behind when `quick`)."""
        return cls(behind=2000) if quick else cls()


def run(opts: Options, stacks: Stacks | None = None) -> Resume:
    """Open, warm up, drop, fall behind, resume under posts; count gaps and duplicates."""
    fd_limit = raise_fd_limit(2 * opts.clients + 4096)
    load_before = loadavg()
    env = {"FEED_MAX_SUBSCRIBERS": str(opts.clients + 1000)}
    with (
        (stacks or Stacks()).get(("writer", "changefeed", "api"), env) as stack,
        Clients(opts.client_procs) as clients,
    ):
        url, db = stack.api_url, stack.database_url
        opened = clients.open(url, "/feed?limit=0", opts.clients)
        if opened < opts.clients:
            raise RuntimeError(f"only {opened} of {opts.clients} streams opened")
        warm = post_paced(url, 10.0, 1.0)
        wait_until(lambda: clients.min_seen() >= len(warm.accepted), 60, "the warm-up posts")
        clients.drop()
        say(f"resume: {opened} dropped; posting {opts.behind} behind them")
        base = stored_count(db)
        with tempfile.TemporaryDirectory(prefix="feedsvc-bench-") as workdir:
            # wrk, paced: a Python client cannot post thousands a second beside the stack.
            seconds = opts.behind / opts.behind_rate
            behind = Load(url, seconds, round(opts.behind_rate), connections=32).run(Path(workdir))
        wait_settled(lambda: stored_count(db), base + len(behind.ids), 10, 120)
        time.sleep(2.0)  # the changefeed's lag behind the database (resolved every 1 s)
        live = Poster(url, opts.live_rate, author="bench_live").background()
        # The replays reading Kafka behind the ring, one consumer each (`feedsvc_feed_replays`;
        # not `_replays_max` or `_replays_refused_total`).
        with GaugeWatch(url, gauge("feedsvc_feed_replays"), 0.1) as watch:
            target = len(warm.accepted) + len(behind.ids) + len(live.accepted)
            say(f"resume: reconnecting {opened} with Last-Event-ID; {target} to catch up")
            began = time.monotonic()
            failed = clients.reopen()
            catch_up: float | None
            try:
                # An even 0.2 s pace: the catch-up time has that resolution.
                wait_until(
                    lambda: clients.min_seen() >= target,
                    opts.catch_up_limit_s,
                    "the catch-up",
                    interval=0.2,
                    max_interval=0.2,
                )
                catch_up = time.monotonic() - began
            except Timeout as exc:
                say(f"resume: {exc}")
                catch_up = None
            time.sleep(2.0)
        live.stop()
        accepted = {*warm.accepted, *behind.ids, *live.accepted}
        wait_settled(clients.min_seen, len(accepted), 5, 60)
        time.sleep(1.0)
        reads = clients.collect(per_stream=True)
    gaps = sum(len(accepted - set(s["seen"])) for s in reads["streams"])
    return Resume(
        clients=opened,
        catch_up_s=None if catch_up is None else round(catch_up, 2),
        gaps=gaps,
        duplicates=reads["duplicates"],
        kafka_consumers_max=watch.max,
        events_behind=len(behind.ids),
        conditions={
            **machine(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "reconnect_failures": failed,
            "live_rate": opts.live_rate,
            "accepted": len(accepted),
            "behind_statuses": dict(behind.statuses),
            "live_statuses": live.statuses(),
            "resets_read": reads["resets"],
            "resume_notices_read": reads["resumes"],
            "kafka_consumers_max": (
                "max of feedsvc_feed_replays in /metrics (replays reading Kafka, one "
                "consumer each), every 0.1 s; null: the api did not expose it"
            ),
            "fd_limit": fd_limit,
            "processes": "1 api, 1 writer, changefeed stand-in, PostgreSQL, 1 Kafka broker",
        },
    )
