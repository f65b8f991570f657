"""Settings of every feedsvc process, read once from `FEED_*` environment variables.

Each field's type carries its constraint (a `msgspec.Meta` range, or a `Literal` of the
values allowed), so a new setting is one annotated line plus its docstring.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

PREFIX = "FEED_"

Positive = Annotated[int, msgspec.Meta(ge=1)]
"""A count that must be at least one."""
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
"""A size or duration where zero means none (or: let the kernel choose)."""
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""A TCP port; 0 asks the kernel for a free one."""
Seconds = Annotated[float, msgspec.Meta(gt=0)]
"""A duration that must be above zero."""
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
"""Python's logging level names (any case in the environment)."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """One process's configuration; each field is the variable `FEED_<NAME>`."""

    database_url: str = "postgresql://root@localhost:26257/feedsvc?sslmode=disable"
    """Where messages live: CockroachDB in compose, PostgreSQL in native tests."""

    kafka_bootstrap: str = "localhost:9092"
    """Kafka as this process reaches it."""

    changefeed_kafka: str = ""
    """Kafka as CockroachDB reaches it, for the changefeed sink; empty means `kafka_bootstrap`."""

    host: str = "127.0.0.1"
    """The api's listen address; compose sets 0.0.0.0 inside the container."""

    port: Port = 8000
    """The api's listen port."""

    writer_metrics_port: Port = 0
    """Where a writer serves `/metrics`, `/health/live` and `/health/ready` (on `host`); 0,
    the default, serves none, so several writers on one machine never fight over a port."""

    api_workers: NonNegative = 0
    """api worker processes sharing the port, each with its own event loop, Kafka producer,
    relay and database pool: one event loop uses one core. 0 means one per core."""

    max_inflight: Positive = 128
    """POSTs waiting on Kafka at once, per api worker; one more gets 429 at once rather than a
    queue. Small, because an admitted POST waits behind all the others (Little's law): 128
    at 100 acknowledged/s is 1.3 s, well inside FEED_KAFKA_TIMEOUT_S; more only turns 429s
    into 503s."""

    max_backlog: Positive = 100_000
    """Records the writer may lag behind before POST answers 429 (about 20 s of writing)."""

    backlog_refresh_s: Seconds = 1.0
    """How often the api re-reads the writer's lag; requests never wait on it."""

    kafka_timeout_s: Seconds = 5.0
    """The longest a POST takes from its arrival when Kafka does not acknowledge: 503 by then."""

    db_timeout_s: Seconds = 5.0
    """The longest a query waits for a pooled database connection before it fails (a down
    database is reported within it instead of holding requests and the writer)."""

    submitted_partitions: Positive = 6
    """Partitions of `messages.submitted`: the most writers that can share the work."""

    topic_replication_factor: Positive = 1
    """Copies of each partition of the topics setup creates: 1 for one broker, 3 for three."""

    topic_min_insync_replicas: Positive = 1
    """Copies a record must reach before Kafka acknowledges it (acks=all): 1 of 1, or 2 of 3."""

    submitted_retention_ms: Annotated[int, msgspec.Meta(ge=-1)] = 604_800_000
    """How long `messages.submitted` keeps records (7 days): the longest writer outage that
    loses no accepted post. -1 keeps them forever."""

    writer_batch: Positive = 500
    """Rows per INSERT: CockroachDB advises 100-1000 rows per multi-row statement."""

    writer_linger_ms: NonNegative = 50
    """How long the writer waits to fill a batch when traffic is light."""

    db_pool_size: Positive = 4
    """Connections per process. compose.yaml sets 2 for the api and 1 per writer, so the stack
    stays within the 5 concurrent transactions an unlicensed CockroachDB cluster allows."""

    history_limit: Positive = 50
    """Messages `GET /feed` sends before going live when the client names no `limit`."""

    heartbeat_s: Seconds = 15.0
    """The longest silence on an idle feed: a comment heartbeat comes at most this long (and
    at least 15/16 of it) after the last data, to keep proxies from closing the stream."""

    subscriber_buffer: Positive = 1024
    """Events one feed client may fall behind before it is told to resume and closed."""

    max_subscribers: Positive = 10_000
    """Open feed streams per api process; one more is answered with a retry hint."""

    ring_size: Positive = 10_000
    """Recent feed events kept in memory to serve resumes without reading Kafka."""

    socket_sndbuf: NonNegative = 262_144
    """Kernel send buffer of each client socket, in bytes (0: the kernel's autotuning, up to
    4 MiB). It bounds what a stalled feed client holds in the kernel, and how soon it is cut."""

    max_head_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32_768
    """The largest request head (request line and headers) the api reads; a larger one gets
    431. Twice HAProxy's default buffer, which must hold a whole head (`tune.bufsize`,
    16 KiB), so no head the front door lets through is cut; browsers' are a few KiB."""

    head_timeout_s: Seconds = 10.0
    """How long a request's head may take from its first byte; then 408. A proxy forwards
    a head whole, so only a direct client that trickles one meets it."""

    idle_timeout_s: Seconds = 75.0
    """How long a connection may stay without a request (before its first, or between
    two) before it is closed. Keep it above the front door's own idle timeouts, so the
    proxy, not the api, closes a connection it pools (no request races the close)."""

    body_timeout_s: Seconds = 2.5
    """How long a POST's body may take after its head; then 408. At most half of
    FEED_KAFKA_TIMEOUT_S is used, so Kafka always has the other half; a 4 KiB body takes
    milliseconds on any link."""

    max_connections: NonNegative = 0
    """Open connections per api worker; one more gets 503 and is closed. 0 means the
    worker's file limit (`ulimit -n`) less a quarter of it, at most 1,000, kept for Kafka,
    the database and logs; a larger value is lowered to that, so descriptors never run out."""

    shutdown_grace_s: Seconds = 10.0
    """Seconds uvicorn gives open streams at SIGTERM; below compose's stop_grace_period."""

    cockroach_license: str = ""
    """Optional CockroachDB enterprise licence key, set as `enterprise.license` by setup."""

    cockroach_organization: str = ""
    """The organization the licence key was issued to (`cluster.organization`)."""

    log_level: LogLevel = "INFO"
    """Python logging level name."""

    trusted_proxies: str = "127.0.0.1,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
    """Comma-separated addresses or networks (or `*`) whose `X-Forwarded-For` names the
    client in the access log: the front door's. Loopback and the private ranges, as Rails
    trusts by default (https://api.rubyonrails.org/classes/ActionDispatch/RemoteIp.html),
    so the proxy is believed in compose's network and natively; the proxy itself
    replaces what any client sends (docs/fair-share.md)."""

    cors_origins: str = ""
    """Comma-separated origins (`https://app.example`) whose pages may call the api; empty
    sends no CORS headers, so browsers keep other origins out."""

    @property
    def cors_origin_list(self) -> list[str]:
        """`cors_origins` split into origins, blanks dropped."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def changefeed_sink(self) -> str:
        """The Kafka bootstrap address CockroachDB writes the changefeed to."""
        return self.changefeed_kafka or self.kafka_bootstrap

    def __post_init__(self) -> None:
        """The rules no single field's type can state.

        Note: msgspec checks a field's constraint when it converts a value
        (`load_settings`), not when a Settings is built in code.
        """
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            # Kafka creates such topics, then refuses every acks=all send (NotEnoughReplicas):
            # https://cwiki.apache.org/confluence/display/KAFKA/KIP-579%3A+new+exception+on+min.insync.replicas+%3E+replication.factor
            raise ValueError(
                f"{PREFIX}TOPIC_MIN_INSYNC_REPLICAS={self.topic_min_insync_replicas} is above "
                f"{PREFIX}TOPIC_REPLICATION_FACTOR={self.topic_replication_factor}: "
                "no send could ever be acknowledged"
            )
        if self.api_workers < 0:
            raise ValueError(f"{PREFIX}API_WORKERS must be 0 (one per core) or more")
        if self.submitted_retention_ms < 1 and self.submitted_retention_ms != -1:
            raise ValueError(f"{PREFIX}SUBMITTED_RETENTION_MS must be positive, or -1 (forever)")
        for proxy in self.trusted_proxies.split(","):
            try:
                if proxy.strip() != "*":
                    ipaddress.ip_network(proxy.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{PREFIX}TRUSTED_PROXIES: {proxy!r} is not an address, a network or *"
                ) from None
        for origin in self.cors_origin_list:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"{PREFIX}CORS_ORIGINS: {origin!r} is not an origin like https://app.example"
                )


class ConfigError(ValueError):
    """A `FEED_*` variable that is unknown or cannot be read; the message names it."""


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build the settings from an environment; fails naming the first bad variable."""
    fields = {f.name: f for f in msgspec.structs.fields(Settings)}
    values: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :].lower()
        if name not in fields:
            raise ConfigError(f"{key} is not a setting of feedsvc")
        values[name] = _convert(key, raw, fields[name].type)
    try:
        return Settings(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _convert(key: str, raw: str, kind: Any) -> Any:
    """One variable's value as its field's type, within the field's constraint."""
    if get_origin(kind) is Literal:
        # A choice is matched regardless of case (logging takes `info` as well as `INFO`).
        choices = get_args(kind)
        for choice in choices:
            if choice.casefold() == raw.casefold():
                return choice
        raise ConfigError(f"{key}={raw!r}: must be one of {', '.join(choices)}")
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{key}={raw!r}: {exc}") from None
