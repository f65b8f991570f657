"""The result shape of every scenario: a frozen Struct, printed as the last line on stdout.

The keys named in issue 12 come first in each Struct; `conditions` says how the figures
were taken (machine, load average, lengths, rates), so a number never travels without it.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Ingest(msgspec.Struct, frozen=True, kw_only=True):
    """`ingest`: POSTs at the highest rate the api answers, beside the bare handler."""

    scenario: str = "ingest"
    accepted_per_s: int
    stored_per_s: int
    post_p50_ms: float | None
    post_p99_ms: float | None
    lost: int
    duplicates: int
    baseline_post_per_s: int | None
    ratio_to_baseline: float | None
    api_cpu_us_per_post: float | None
    baseline_cpu_us_per_request: float | None
    accepted: int
    stored: int
    statuses: dict[str, int]
    conditions: dict[str, Any]


class Polite(msgspec.Struct, frozen=True, kw_only=True):
    """A polite client beside the overload: one POST every 0.2 s from another address."""

    per_address_limits: bool
    """Whether the proxy's per-address limits were on (docs/fair-share.md)."""
    sent: int
    accepted_pct: float | None
    p99_ms: float | None
    """Of every answer it got during the flood, 202 or not."""
    p99_ms_after_ramp: float | None
    """The same, without the first seconds of the flood (`overload.RAMP_S`)."""
    statuses: dict[str, int]
    flood_accepted_per_s: int
    flood_rejected_429: int
    lost: int
    """Accepted in this run (any client) and not stored."""
    loadavg: list[list[float]]
    """The machine's load average before and after this run."""


class Overload(msgspec.Struct, frozen=True, kw_only=True):
    """`overload`: POSTs offered at 10x the sustainable rate."""

    scenario: str = "overload"
    offered_per_s: int
    accepted_per_s: int
    rejected_429: int
    rejected_503: int
    reject_p99_ms: float | None
    max_backlog: int | None
    backlog_limit: int
    lost: int
    sustainable_per_s: int
    statuses: dict[str, int]
    polite: list[Polite]
    """The polite client, without and (on the proxy path) with per-address limits."""
    conditions: dict[str, Any]


class FanoutRun(msgspec.Struct, frozen=True, kw_only=True):
    """The best rate found at one subscriber count, for the api and the bare baseline."""

    subscribers: int
    deliveries_per_s: int | None
    deliver_p50_ms: float | None
    deliver_p99_ms: float | None
    post_p99_ms: float | None
    baseline_deliveries_per_s: int | None
    ratio_to_baseline: float | None
    posts_per_s: float | None
    api_cpu_us_per_delivery: float | None
    """The api's CPU per delivery in the best trial (all workers; posting included)."""
    baseline_cpu_us_per_delivery: float | None
    missing: int
    duplicates: int
    trials: list[dict[str, Any]]
    baseline_trials: list[dict[str, Any]]


class Fanout(msgspec.Struct, frozen=True, kw_only=True):
    """`fanout`: the highest delivery rate with p99 within the bound, per subscriber count."""

    scenario: str = "fanout"
    runs: list[FanoutRun]
    conditions: dict[str, Any]


class Idle(msgspec.Struct, frozen=True, kw_only=True):
    """`idle`: as many idle feed connections as one api worker holds."""

    scenario: str = "idle"
    connections: int
    rss_per_conn_kb: float | None
    heartbeat_cpu_pct: float | None
    post_p99_ms: float | None
    asked: int
    conditions: dict[str, Any]


class ChurnRun(msgspec.Struct, frozen=True, kw_only=True):
    """One stream count of `churn`: the api's CPU per leave+join, its idle CPU subtracted."""

    streams: int
    held: int
    leave_joins: int
    failed: int
    rate_per_s: float
    api_cpu_us_per_leave_join: float | None
    churn_cpu_pct: float
    idle_cpu_pct: float
    ratio_to_first: float | None


class Churn(msgspec.Struct, frozen=True, kw_only=True):
    """`churn`: streams leaving and joining among N idle ones, at several N."""

    scenario: str = "churn"
    runs: list[ChurnRun]
    conditions: dict[str, Any]


class Resume(msgspec.Struct, frozen=True, kw_only=True):
    """`resume`: clients drop together and reconnect behind while posts continue."""

    scenario: str = "resume"
    clients: int
    catch_up_s: float | None
    gaps: int
    duplicates: int
    kafka_consumers_max: int | None
    events_behind: int
    conditions: dict[str, Any]


class FaultRun(msgspec.Struct, frozen=True, kw_only=True):
    """What one fault did to the posts accepted from its start to the next fault's."""

    fault: str
    accepted: int
    stored: int
    delivered_to_every_client: int
    lost: int
    duplicates_delivered: int
    recovery_s: float | None


class Faults(msgspec.Struct, frozen=True, kw_only=True):
    """`faults`: crashes and restarts under steady posts and feed clients."""

    scenario: str = "faults"
    faults: list[FaultRun]
    clients: int
    conditions: dict[str, Any]


class All(msgspec.Struct, frozen=True, kw_only=True):
    """`all`: every scenario's result (None where one failed), keyed by scenario."""

    scenario: str = "all"
    results: dict[str, Any]
    failed: dict[str, str]
    seconds: float
