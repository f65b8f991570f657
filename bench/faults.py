"""`faults`: crashes and restarts under a steady stream of posts and 100 resuming feed clients.

In turn: the writer is SIGKILLed (and started again), the api is SIGKILLed (and started
again on its port), PostgreSQL is restarted, Kafka is restarted. Posts go on throughout
(`Poster.background`); the clients reconnect with their last event id whenever a stream
ends, as a browser does. A fault's window runs from its start to the next fault's; for
the posts accepted (202) in it: stored, delivered to every client, lost (accepted and not
stored, or stored and not read by every client), messages read twice. Recovery: from the
fault's start to when the first message posted after the fault was over (the process or
server started again) had been read by every client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.feedstream import Clients
from bench.poster import Poster
from bench.proc import raise_fd_limit
from bench.report import loadavg, machine, say
from bench.result import FaultRun, Faults
from bench.stack import Stacks, stored_count, stored_ids
from devstack import Stack
from devstack.poll import Timeout, wait_settled, wait_until


def _kill_writer(stack: Stack) -> None:
    stack.service("writer").kill()
    stack.start_role("writer", 90.0)


def _kill_api(stack: Stack) -> None:
    stack.service("api").kill()
    stack.start_role("api", 90.0)


def _restart_kafka(stack: Stack) -> None:
    stack.kafka.stop()
    stack.kafka.start()


def _restart_database(stack: Stack) -> None:
    stack.postgres.stop()
    stack.postgres.start()


FAULTS: tuple[tuple[str, Callable[[Stack], None]], ...] = (
    ("writer_sigkill", _kill_writer),
    ("api_sigkill", _kill_api),
    # The database before Kafka: a Kafka restart has left the api's producer failing every
    # send until the api restarts (OutOfOrderSequenceNumber), which would hide the rest.
    ("database_restart", _restart_database),
    ("kafka_restart", _restart_kafka),
)


@dataclass(frozen=True)
class Options:
    """Clients, post rate, and how long to watch for recovery and to settle after it."""

    clients: int = 100
    rate: float = 30.0
    recovery_limit_s: float = 90.0
    settle_s: float = 10.0

    @classmethod
    def make(cls, quick: bool) -> Options:
        """The defaults (shorter settling and recovery bound when `quick`)."""
        return cls(recovery_limit_s=45.0, settle_s=3.0) if quick else cls()


def _recovery(
    clients: Clients, poster: Poster, fault_at: float, over_at: float, n: int, limit: float
) -> float | None:
    """Seconds from `fault_at` until the first post sent after `over_at` was read by all `n`."""

    def recovered() -> float | None:
        after = sorted(
            (a for a in list(poster.answers) if a.sent > over_at and a.id), key=lambda a: a.sent
        )
        if not after:
            return None
        first = after[0]
        assert first.id is not None
        count, last = clients.reads([first.id])[first.id]
        # Never 0 (which would read as "not yet"): the read came after the fault ended.
        return round(last - fault_at, 2) if count >= n else None

    try:
        return wait_until(recovered, limit, "the recovery", interval=0.5, max_interval=0.5)
    except Timeout:
        return None


def run(opts: Options, stacks: Stacks | None = None) -> Faults:
    """Inject each fault in turn under load; account for every accepted post."""
    raise_fd_limit(4096)
    load_before = loadavg()
    marks: list[tuple[str, float, float | None]] = []
    with (
        (stacks or Stacks()).get(("writer", "changefeed", "api")) as stack,
        Clients(1) as clients,
    ):
        opened = clients.open(stack.api_url, "/feed?limit=0", opts.clients, reconnect=True)
        if opened < opts.clients:
            raise RuntimeError(f"only {opened} of {opts.clients} streams opened")
        base_rows = stored_count(stack.database_url)
        poster = Poster(stack.api_url, opts.rate, author="bench_faults").background()
        time.sleep(opts.settle_s)
        for name, inject in FAULTS:
            at = time.monotonic()
            say(f"faults: {name}")
            inject(stack)
            over = time.monotonic()
            recovery = _recovery(clients, poster, at, over, opened, opts.recovery_limit_s)
            say(f"faults: {name}: recovered in {recovery} s")
            marks.append((name, at, recovery))
            time.sleep(opts.settle_s)
        poster.stop()
        accepted = poster.accepted
        say(f"faults: {len(accepted)} accepted; waiting for storage and delivery")
        wait_settled(lambda: stored_count(stack.database_url) - base_rows, len(accepted), 15, 120)
        wait_settled(clients.min_seen, len(accepted), 10, 120)
        stored = set(stored_ids(stack.database_url))
        reads = clients.collect(per_stream=True)
    seen = [set(s["seen"]) for s in reads["streams"]]
    runs: list[FaultRun] = []
    for i, (name, at, recovery) in enumerate(marks):
        start = at if i else float("-inf")
        end = marks[i + 1][1] if i + 1 < len(marks) else float("inf")
        ids = {a.id for a in poster.answers if a.id is not None and start <= a.sent < end}
        kept = ids & stored
        everywhere = {k for k in kept if all(k in s for s in seen)}
        dups = sum(1 for s in reads["streams"] for k in s["duplicates"] if k in ids)
        runs.append(
            FaultRun(
                fault=name,
                accepted=len(ids),
                stored=len(kept),
                delivered_to_every_client=len(everywhere),
                lost=(len(ids) - len(kept)) + (len(kept) - len(everywhere)),
                duplicates_delivered=dups,
                recovery_s=recovery,
            )
        )
    return Faults(
        faults=runs,
        clients=opened,
        conditions={
            **machine(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "rate": opts.rate,
            "settle_s": opts.settle_s,
            "statuses": poster.statuses(),
            "stream_reconnects": reads["reconnects"],
            "resets_read": reads["resets"],
            "window": "a fault's posts: sent from its start to the next fault's (the first "
            "window also holds the posts before it)",
            "restarts": "writer and api started again at once after SIGKILL; Kafka and "
            "PostgreSQL stopped (SIGTERM / fast) and started",
            "processes": "1 api, 1 writer, changefeed stand-in, PostgreSQL, 1 Kafka broker",
        },
    )
