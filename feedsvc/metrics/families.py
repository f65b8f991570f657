"""The metrics feedsvc exposes: one family per part of the service, names, types, labels.

Each family registers its metrics in the registry it is given (`feedsvc.metrics.Metrics`
creates each family once per process). Gauges name their multiprocess mode: how the
values of several api workers combine (`livesum`, `livemax`, `livemin` over the
workers alive).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Request and insert latencies: a millisecond (a 429) up to the 10 s of a slow Kafka."""
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
"""Publish→deliver: the feed's aim is a p99 within 200 ms, so buckets straddle it."""
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
"""Records per writer batch: 1 when idle, up to `FEED_WRITER_BATCH` under load."""
PRODUCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2.5, 5)
"""Kafka produce→acknowledgement: BENCHMARKS.md's POST p50 ~22 ms and p99 ~78 ms at 2,500/s
fall between fine buckets; up to the 5 s of `FEED_KAFKA_TIMEOUT_S`."""
PIPELINE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60, 300)
"""Accepted→stored and stored→published: tens of ms when flowing (the writer's linger, the
stand-in's poll), BENCHMARKS.md's 200 ms aim and ~0.4-0.9 s p99s at 5,000 streams, the
~10 s its fault drills take to recover, and minutes of an outage."""


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
        if method not in _METHODS:
            # Clients choose the method: a label value per invented one would be unbounded.
            method = "other"
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            # Children cached: `labels()` validates and locks on every call (~2 µs a POST).
            child = self._children[key] = self.duration.labels(method, route, str(status))
        child.observe(seconds)


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


class ConnectionMetrics:
    """Connections to the api and those its limits refused or cut
    (docs/api.md#limits-at-the-edge)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open = Gauge(
            "feedsvc_connections_open",
            "Client connections open, feed streams included.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.refused = Counter(
            "feedsvc_connections_refused",
            "Connections answered 503 and closed at once: the worker had FEED_MAX_CONNECTIONS.",
            registry=registry,
        )
        self.cut = Counter(
            "feedsvc_connections_cut",
            "Connections closed by a limit before a request was served, by reason "
            "(head_too_large: 431, head_timeout: 408, idle: no request in time).",
            ["reason"],
            registry=registry,
        )


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
        self.kafka_send_errors = Counter(
            "feedsvc_kafka_send_errors",
            "Sends to messages.submitted that failed or timed out (answered 503), by error.",
            ["error"],
            registry=registry,
        )
        self.inflight = Gauge(
            "feedsvc_posts_inflight",
            "POSTs admitted and not answered yet (key claim, Kafka send).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.event_loop_lag = Gauge(
            "feedsvc_event_loop_lag_seconds",
            "How late the api's event loop runs timers: how long ready work waits its turn "
            "(the latest of the workers).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.writer_backlog = Gauge(
            "feedsvc_writer_backlog",
            "Records the writer has not stored yet (each worker polls it; the highest).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.api_ready = Gauge(
            "feedsvc_api_ready",
            "1 while this api worker has Kafka and its feed as /health/ready wants them "
            "(the database is pinged per probe, not here); summed over the workers.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.produce_seconds = Histogram(
            "feedsvc_kafka_produce_seconds",
            "From handing an accepted message to the producer to Kafka's acknowledgement "
            "(acks=all); sends that failed are not in it.",
            buckets=PRODUCE_BUCKETS,
            registry=registry,
        )


class HealthMetrics:
    """What the api can serve now (`/health/ready` says the same)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.database_reachable = Gauge(
            "feedsvc_database_reachable",
            "1 while the database answers the api's pings, 0 while it does not (degraded: "
            "reads and keyed posts fail, posts and the live feed go on); the lowest worker.",
            registry=registry,
            multiprocess_mode="livemin",
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
        self.stored_to_published = Histogram(
            "feedsvc_feed_stored_to_published_seconds",
            "From a row's commit (its changefeed `updated`) to the relay publishing it to "
            "the feed's streams (repeats not counted).",
            buckets=PIPELINE_BUCKETS,
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
        self.accepted_to_stored = Histogram(
            "feedsvc_writer_accepted_to_stored_seconds",
            "From a message's `created_at` (the api accepting it) to the writer's insert "
            "of it returning (repeats included).",
            buckets=PIPELINE_BUCKETS,
            registry=r,
        )

    def retried(self, operation: str) -> None:
        """Count one failed attempt of `operation` that is tried again."""
        self.retries.labels(operation).inc()
