"""Process metrics with `prometheus-client`: one registry per process, summed across workers.

Each process builds one `Metrics` (its own `CollectorRegistry`, never the client's global
one, so tests and several roles in one interpreter do not collide); its families
(`http`, `posts`, `feed`, `writer`) are created on first use, so a process exposes only
what it runs. `render` is the `/metrics` body.

Several api workers add up through the client's multiprocess mode
(https://prometheus.github.io/client_python/multiprocess/): the launcher calls
`prepare_multiprocess(directory)` before starting the workers and `worker_exited(pid)`
when one ends; every worker then writes its values to files in that directory and
whichever worker is scraped renders the sum of all of them. Without it (the variable
`PROMETHEUS_MULTIPROC_DIR` unset) each process renders its own registry.

Values kept elsewhere (the admission's in-flight count, the relay's counts) are copied
in by `refresh`, on a one-second timer (`refresh_every`) and before each render:
multiprocess mode has no callback gauges, and a plain int on the hot path costs less
than a metric update per event.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cached_property
from pathlib import Path

import anyio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.metrics import disable_created_metrics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REFRESH_S = 1.0
"""How stale another worker's gauges may be in a scrape (multiprocess mode)."""
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Request and insert latencies: a millisecond (a 429) up to the 10 s of a slow Kafka."""
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
"""Publish→deliver: the feed's aim is a p99 within 200 ms, so buckets straddle it."""
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
"""Records per writer batch: 1 when idle, up to `FEED_WRITER_BATCH` under load."""


def prepare_multiprocess(directory: str | os.PathLike[str]) -> None:
    """Make this process and every worker it starts from now on share metrics in `directory`.

    Call it in the launcher before starting the workers: it creates `directory` or
    deletes the client's files (`*.db`) in it (values of an earlier run would be added
    to this one's), sets `PROMETHEUS_MULTIPROC_DIR`
    for the children, and switches this process's metric values to that directory too
    (a forked child inherits the switch; a spawned one reads the variable).
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    # The client picks its value class when it is imported; metrics made after this
    # line, here or in a forked child, write to the directory.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def worker_exited(pid: int) -> None:
    """Forget the gauges of worker `pid`, which ended (its counters and histograms stay).

    Note: call it from the launcher whenever a worker ends, or the live gauges (open
    streams, in-flight posts) keep counting a worker that is gone.
    """
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    """The shared directory when metrics are summed across processes, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The metrics of one process; `render` is its Prometheus text exposition."""

    def __init__(self) -> None:
        # `_created` series exist only in single-process mode; without them the two modes
        # expose the same series.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self._refreshers: list[Callable[[], None]] = []

    @cached_property
    def http(self) -> HttpMetrics:
        """Request durations of the api (every route but the endless `/feed`)."""
        return HttpMetrics(self.registry)

    @cached_property
    def posts(self) -> PostMetrics:
        """`POST /messages` outcomes and Kafka send errors."""
        return PostMetrics(self.registry)

    @cached_property
    def feed(self) -> FeedMetrics:
        """The relay and `/feed` streams."""
        return FeedMetrics(self.registry)

    @cached_property
    def writer(self) -> WriterMetrics:
        """The writer: batches, inserts, retries, dead letters."""
        return WriterMetrics(self.registry)

    def follow(self, gauge: Gauge, read: Callable[[], float | None]) -> None:
        """Set `gauge` to `read()` at each refresh (None leaves it as it was)."""

        def refresh() -> None:
            value = read()
            if value is not None:
                gauge.set(value)

        self._refreshers.append(refresh)

    def count(self, counter: Counter, read: Callable[[], int]) -> None:
        """Keep `counter` equal to a running total `read()` kept elsewhere (it only grows)."""
        last = 0

        def refresh() -> None:
            nonlocal last
            now = read()
            if now > last:
                counter.inc(now - last)
            last = now

        self._refreshers.append(refresh)

    def refresh(self) -> None:
        """Copy every followed value in now."""
        for refresh in self._refreshers:
            refresh()

    async def refresh_every(self, seconds: float = REFRESH_S) -> None:
        """Refresh until cancelled: what other workers render of this one is this fresh."""
        while True:
            self.refresh()
            await anyio.sleep(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition: this process's, or every worker's summed."""
        self.refresh()
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        # A fresh registry per scrape, as the client's docs say: registering the collector
        # in a registry that also holds the metrics would expose them twice.
        summed = CollectorRegistry()
        multiprocess.MultiProcessCollector(summed, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(summed)

    @asynccontextmanager
    async def served(self, host: str, port: int) -> AsyncIterator[None]:
        """Serve this process's registry at `http://host:port/metrics` meanwhile; port 0:
        not at all.

        Note: for a process without an HTTP server of its own (the writer). The client's
        small threaded server answers from its own thread (any path but `/favicon.ico`);
        values are read under the client's locks, so the event loop never waits for a
        scrape.
        """
        if not port:
            yield
            return
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


class HttpMetrics:
    """Request durations by method, route template and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "feedsvc_http_request_duration_seconds",
            "HTTP requests from arrival to the end of the answer, by method, route and "
            "status (not /feed: a stream lasts as long as its client stays).",
            ["method", "route", "status"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str, int], Histogram] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one request; `/feed` is not recorded."""
        if route == "/feed":
            return
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            if method not in _METHODS:
                # Clients choose the method: a label value per invented one would be unbounded.
                method = "other"
            # Children cached: `labels()` validates and locks on every call (~2 µs a POST).
            child = self._children[key] = self.duration.labels(method, route, str(status))
        child.observe(seconds)


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


class PostMetrics:
    """What became of each `POST /messages`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = Counter(
            "feedsvc_posts_accepted",
            "Messages acknowledged by Kafka (202).",
            registry=registry,
        )
        self.refused = Counter(
            "feedsvc_posts_refused",
            "POSTs refused, by status and reason.",
            ["status", "reason"],
            registry=registry,
        )
        self.idempotency_unchecked = Counter(
            "feedsvc_idempotency_unchecked",
            "Keyed POSTs sent without checking the key: the database did not answer in time.",
            registry=registry,
        )
        self.kafka_send_errors = Counter(
            "feedsvc_kafka_send_errors",
            "Sends to messages.submitted that failed or timed out (answered 503), by error.",
            ["error"],
            registry=registry,
        )
        self.inflight = Gauge(
            "feedsvc_posts_inflight",
            "POSTs admitted and not answered yet (key lookup, Kafka send).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.writer_backlog = Gauge(
            "feedsvc_writer_backlog",
            "Records the writer has not stored yet (each worker polls it; the highest).",
            registry=registry,
            multiprocess_mode="livemax",
        )


class FeedMetrics:
    """The relay's progress and the feed's streams."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.subscribers = Gauge(
            "feedsvc_feed_subscribers",
            "Open feed streams.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.streams = Counter("feedsvc_feed_streams", "Feed streams started.", registry=r)
        self.turned_away = Counter(
            "feedsvc_feed_turned_away", "Feed streams refused with a retry hint.", registry=r
        )
        self.head_offset = Gauge(
            "feedsvc_feed_head_offset",
            "Next offset of messages.committed to read (the worker furthest behind).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.relay_lag = Gauge(
            "feedsvc_relay_lag_seconds",
            "Now minus the newest resolved timestamp the relay read (0 until the first).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.events = Counter(
            "feedsvc_feed_events", "Feed events published (duplicates dropped).", registry=r
        )
        self.sent = Counter(
            "feedsvc_feed_events_sent",
            "Live events written to feed clients (one per event and client).",
            registry=r,
        )
        self.delivery = Histogram(
            "feedsvc_feed_delivery_seconds",
            "From reading a changefeed record to its frame written to a client; "
            "a sample of 1 in 16 events per client.",
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.lag_cuts = Counter(
            "feedsvc_feed_lag_cuts",
            "Feed streams ended for falling behind (told to resume).",
            registry=r,
        )
        self.resumes = Counter(
            "feedsvc_feed_resumes",
            "`resume` events sent (the stream ends; the client reconnects), by reason.",
            ["reason"],
            registry=r,
        )
        self.resets = Counter(
            "feedsvc_feed_resets",
            "`reset` events sent (a position that cannot be continued), by reason.",
            ["reason"],
            registry=r,
        )
        self.replays = Gauge(
            "feedsvc_feed_replays",
            "Resumes older than the ring being read back from Kafka now (one consumer each).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.replays_max = Gauge(
            "feedsvc_feed_replays_max",
            "Replays allowed at once; a resume beyond it gets a retry hint.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.replays_refused = Counter(
            "feedsvc_feed_replays_refused",
            "Resumes answered with a retry hint because every replay slot was taken.",
            registry=r,
        )
        self.restarts = Counter(
            "feedsvc_feed_restarts",
            "Times the topic lost the relay's position (recreated, or retention) and it restarted.",
            registry=r,
        )

    def notice(self, kind: str, reason: str) -> None:
        """Count a `reset` or `resume` event sent to a client, by the kind of its reason."""
        family = self.resets if kind == "reset" else self.resumes
        family.labels(reason_kind(reason)).inc()


def reason_kind(reason: str) -> str:
    """A reset's or resume's reason text as a label of few values."""
    text = reason.lower()
    for words, kind in _REASON_KINDS:
        if any(word in text for word in words):
            return kind
    return "other"


_REASON_KINDS = (
    # First match wins: "the feed's reader fell behind the topic's retention" is retention.
    (("retention",), "retention"),
    (("recreated",), "topic_recreated"),
    (("unknown position",), "unknown_position"),
    (("fell behind",), "lagging"),
    (("shutting down",), "shutdown"),
    (("changefeed", "high-water", "job is"), "changefeed_gap"),
    (("restarted", "replay ended"), "restarted"),
)
"""Reason texts of `feedsvc.relay` (and of `schema`'s gap markers) by the label they get."""


def resolved_lag_s(resolved: int | None) -> float | None:
    """Seconds from a resolved timestamp (an `hlc_value`: wall ns x 10^10 + logical) to now."""
    if resolved is None:
        return None
    return max(0.0, time.time() - resolved / 10**19)


class WriterMetrics:
    """The writer's batches, inserts, retries and dead letters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.stored = Counter(
            "feedsvc_writer_stored",
            "Records of messages.submitted stored (repeats included).",
            registry=r,
        )
        self.out_of_range = Counter(
            "feedsvc_writer_offsets_out_of_range",
            "Times the writer's committed offset was outside its partition (expired or recreated).",
            registry=r,
        )
        self.expired = Counter(
            "feedsvc_writer_records_expired",
            "Records retention deleted before the writer read them.",
            registry=r,
        )
        self.dead_letters = Counter(
            "feedsvc_writer_dead_letters",
            "Records sent to messages.dlq, by stage.",
            ["stage"],
            registry=r,
        )
        self.batch_size = Histogram(
            "feedsvc_writer_batch_size",
            "Records per batch fetched from messages.submitted.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.insert_seconds = Histogram(
            "feedsvc_writer_insert_seconds",
            "Storing one batch: its inserts, retries and splits around refused rows.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "feedsvc_writer_retries",
            "Attempts that failed and were retried, by operation (insert: the database).",
            ["operation"],
            registry=r,
        )

    def retried(self, operation: str) -> None:
        """Count one failed attempt of `operation` that is tried again."""
        self.retries.labels(operation).inc()
