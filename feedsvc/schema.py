"""The schema, and every statement that differs between CockroachDB and PostgreSQL.

CockroachDB runs in the product (compose); PostgreSQL, which speaks the same wire
protocol, stands in for it in native tests. The statements below are the only
place the two differ: the rest of feedsvc runs the SQL both understand.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import psycopg
from psycopg import sql
from psycopg.crdb import CrdbConnection

from feedsvc.messages import FeedRestart

log = logging.getLogger(__name__)

POSTGRES_SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS messages (
        id          UUID PRIMARY KEY,
        author      TEXT NOT NULL,
        text        TEXT NOT NULL,
        created_at  TIMESTAMPTZ NOT NULL
    )
    """,
    # Keyset pagination walks (created_at, id) newest first.
    "CREATE INDEX IF NOT EXISTS messages_created_at_id ON messages (created_at, id)",
    # Idempotency-Keys bound to their first text (feedsvc.http.idempotency); kept as long
    # as the messages, since a key forgotten while its message is stored would let a
    # second text in, and the writer's insert-if-absent would drop it after its 202.
    """
    CREATE TABLE IF NOT EXISTS key_claims (
        id          UUID PRIMARY KEY,
        digest      BYTEA NOT NULL,
        created_at  TIMESTAMPTZ NOT NULL
    )
    """,
    # The changefeed stand-in's commit clock (`HistorySnapshot`); one row, filled by it.
    """
    CREATE TABLE IF NOT EXISTS changefeed_clock (
        one   boolean PRIMARY KEY DEFAULT true CHECK (one),
        last  timestamptz NOT NULL
    )
    """,
]

COCKROACH_SCHEMA = [
    # A random UUID primary key spreads inserts over all ranges; a sequential key
    # would send every insert to the same range.
    # https://www.cockroachlabs.com/docs/stable/schema-design-table#select-primary-key-columns
    """
    CREATE TABLE IF NOT EXISTS messages (
        id          UUID PRIMARY KEY,
        author      STRING NOT NULL,
        text        STRING NOT NULL,
        created_at  TIMESTAMPTZ NOT NULL
    )
    """,
    # created_at grows monotonically, so a plain index on it would hotspot one range;
    # a hash-sharded index spreads it, and the optimizer still serves ordered LIMIT
    # scans from it by merging the shards.
    # https://www.cockroachlabs.com/docs/stable/hash-sharded-indexes
    "CREATE INDEX IF NOT EXISTS messages_created_at_id ON messages (created_at, id) USING HASH",
    # Idempotency-Keys bound to their first text (feedsvc.http.idempotency), kept as long
    # as the messages (no `ttl_expire_after`: a claim expiring while its message is stored
    # would let a second text in). The id is a UUIDv5, a hash: it spreads like a random one.
    # https://www.cockroachlabs.com/docs/stable/schema-design-table#select-primary-key-columns
    """
    CREATE TABLE IF NOT EXISTS key_claims (
        id          UUID PRIMARY KEY,
        digest      BYTES NOT NULL,
        created_at  TIMESTAMPTZ NOT NULL
    )
    """,
]


def is_cockroach(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server on the other end is CockroachDB."""
    return CrdbConnection.is_crdb(conn)


# --- The history's snapshot time T, comparable with the changefeed's `updated` ---
#
# `GET /feed` reads the latest messages and T in one transaction such that every row the
# read sees has `updated` <= T and every row it does not see has `updated` > T
# (feedsvc.relay.stream relies on it to hand over from history to live).

CHANGEFEED_CLOCK_LOCK = 0x66656564
"""The advisory lock (PostgreSQL) ordering the stand-in's commit stamps and history reads."""


class HistorySnapshot(msgspec.Struct, frozen=True):
    """The dialect of the history read: what runs before it, and how T is read."""

    begin: tuple[str, ...]
    """Statements run first in the read's transaction."""
    snapshot_time: str
    """One row, one column: T as an HLC string `<wall ns>.<logical>` (or a timestamptz)."""


COCKROACH_SNAPSHOT = HistorySnapshot(
    # A SERIALIZABLE transaction reads at one MVCC timestamp, and cluster_logical_timestamp()
    # is that transaction's commit timestamp (the one its reads are valid at, refreshes
    # included: https://github.com/cockroachdb/cockroach/pull/41438), the same HLC the
    # changefeed puts in `updated`. It refuses weaker isolation levels.
    # https://www.cockroachlabs.com/docs/stable/functions-and-operators#system-info-functions
    begin=("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",),
    snapshot_time="SELECT cluster_logical_timestamp()::STRING",
)

POSTGRES_SNAPSHOT = HistorySnapshot(
    # The stand-in stamps `updated` at commit, holding this lock exclusively from the stamp
    # until its commit is visible (devstack/standin.py). While we hold it shared
    # no transaction that wrote `messages` can commit, so every statement after it (READ
    # COMMITTED: each takes its snapshot when it starts, i.e. after the lock) sees every
    # stamped row, and every later stamp is greater than `last`. (Not REPEATABLE READ: its
    # snapshot would be taken by the locking statement itself, before the wait.)
    begin=(f"SELECT pg_advisory_xact_lock_shared({CHANGEFEED_CLOCK_LOCK})",),
    snapshot_time="SELECT coalesce((SELECT last FROM changefeed_clock), 'epoch'::timestamptz)",
)


def history_snapshot(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
) -> HistorySnapshot:
    """The history read's dialect for the server behind `conn`."""
    return COCKROACH_SNAPSHOT if is_cockroach(conn) else POSTGRES_SNAPSHOT


def ensure_database(conninfo: str) -> None:
    """Create the database the conninfo names, when it does not exist yet."""
    name = str(psycopg.conninfo.conninfo_to_dict(conninfo).get("dbname") or "")
    if not name:
        return
    create = sql.SQL("CREATE DATABASE IF NOT EXISTS {}").format(sql.Identifier(name))
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
        # PostgreSQL refuses the connection; create it from the maintenance database.
        with (
            psycopg.connect(conninfo, dbname="postgres", autocommit=True, connect_timeout=10) as pg,
            contextlib.suppress(psycopg.errors.DuplicateDatabase),
        ):  # a concurrent setup
            pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        log.info("created database", extra={"database": name})
        return
    with conn:
        if is_cockroach(conn):
            # CockroachDB accepts a connection to a database that does not exist yet
            # (statements fail later), so "connected" proves nothing: create it if absent.
            # https://www.cockroachlabs.com/docs/stable/create-database
            conn.execute(create)


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the tables and the index; safe to run again and concurrently."""
    for statement in COCKROACH_SCHEMA if is_cockroach(conn) else POSTGRES_SCHEMA:
        conn.execute(statement)


# --- CockroachDB only: the changefeed that turns committed rows into feed events ---


class ChangefeedJob(msgspec.Struct, frozen=True):
    """One row of `SHOW CHANGEFEED JOBS` that feeds our topic."""

    job_id: int
    status: str
    high_water_timestamp: str | None


# Options: https://www.cockroachlabs.com/docs/v25.4/create-changefeed#options
# `updated` puts the commit timestamp in every row; `resolved` emits watermarks;
# a `resolved` interval under 30 s needs `min_checkpoint_frequency` to match;
# `initial_scan = 'no'` because history is read from the table, not the topic;
# `on_error = 'pause'`: a non-retryable error (a sink refusing records, say) pauses the
# job instead of failing it for good, and the next setup resumes it from its checkpoint
# (https://www.cockroachlabs.com/docs/v25.4/create-changefeed#on-error). A paused job keeps
# its protected timestamp for `changefeed.protect_timestamp.max_age` (4 days by default),
# after which it fails (https://www.cockroachlabs.com/docs/v25.4/protect-changefeed-data).
# `virtual_columns = 'omitted'`: the hash-sharded index adds a virtual column, which the
# records leave out either way; said explicitly, CREATE CHANGEFEED does not warn about it
# (https://www.cockroachlabs.com/docs/v25.4/create-changefeed#virtual-columns).
_CHANGEFEED_OPTIONS = (
    "updated, resolved = '1s', min_checkpoint_frequency = '1s', initial_scan = 'no', "
    "on_error = 'pause', virtual_columns = 'omitted'"
)
# Statuses after which a job never emits again; every other one (`retry-running`,
# `cancel-requested`, `reverting`, ... and any status a later release adds) is a job that
# may still run, and a second changefeed next to it would write every row twice.
# https://www.cockroachlabs.com/docs/v25.4/show-jobs#job-status
FINISHED_STATUSES = frozenset({"failed", "canceled", "succeeded", "revert-failed"})
# The default `gc.ttlseconds` (4 hours), used when the zone configuration cannot be read.
# https://www.cockroachlabs.com/docs/v25.4/configure-replication-zones#gc-ttlseconds
DEFAULT_GC_TTL_S = 14_400
# A cursor this close to the GC threshold may be collected before the new job reads it.
GC_MARGIN_S = 600

JobState = Literal["live", "paused", "finished"]


def job_state(status: str) -> JobState:
    """How setup treats a job in `status`: leave it running, resume it, or replace it."""
    if status == "paused":
        return "paused"
    return "finished" if status in FINISHED_STATUSES else "live"


class ChangefeedPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What setup does about the changefeed, and why (the reason is logged).

    Note: `gap` means the new changefeed starts at "now" while rows were committed before
    it that the topic may not hold: clients holding a feed position must get `reset`.
    """

    action: Literal["keep", "resume", "create"]
    reason: str
    job: ChangefeedJob | None = None
    cursor: str | None = None
    gap: bool = False


def hlc_seconds(hlc: str) -> float:
    """The wall-clock part of an HLC timestamp (`"<wall-ns>.<logical>"`), in seconds."""
    return int(hlc.split(".", 1)[0]) / 1e9


def parse_gc_ttl(raw_config_sql: str) -> int:
    """`gc.ttlseconds` from `SHOW ZONE CONFIGURATION`'s `raw_config_sql`, or the default."""
    found = re.search(r"gc\.ttlseconds\s*=\s*(\d+)", raw_config_sql)
    return int(found.group(1)) if found else DEFAULT_GC_TTL_S


def plan_changefeed(
    job: ChangefeedJob | None, *, table_has_rows: bool, now_hlc: str, gc_ttl_s: int
) -> ChangefeedPlan:
    """Decide between keeping, resuming, and creating the changefeed; pure.

    Note: a finished job is replaced from its high-water mark when that is still inside
    the GC window (no row is skipped; the relay drops the repeats). Otherwise the new job
    starts now, and if the table already had rows that is a gap (`gap=True`): also when no
    job is visible at all, since `SHOW CHANGEFEED JOBS` lists finished jobs for 12 hours
    only (https://www.cockroachlabs.com/docs/v25.4/show-jobs#show-changefeed-jobs).
    """
    if job is not None:
        state = job_state(job.status)
        if state == "live":
            return ChangefeedPlan(action="keep", job=job, reason=f"job is {job.status}")
        if state == "paused":
            return ChangefeedPlan(action="resume", job=job, reason="job is paused")
        if job.high_water_timestamp:
            age = hlc_seconds(now_hlc) - hlc_seconds(job.high_water_timestamp)
            if age < gc_ttl_s - min(GC_MARGIN_S, gc_ttl_s // 4):
                return ChangefeedPlan(
                    action="create",
                    job=job,
                    cursor=job.high_water_timestamp,
                    reason=f"job is {job.status}; restarting from its high-water mark "
                    f"({age:.0f} s old, GC window {gc_ttl_s} s)",
                )
            why = f"job is {job.status} and its high-water mark is {age:.0f} s old, "
            why += f"past the GC window of {gc_ttl_s} s"
        else:
            why = f"job is {job.status} and never reached a high-water mark"
    else:
        why = "no changefeed job is visible (finished jobs are listed for 12 hours only)"
    if table_has_rows:
        return ChangefeedPlan(action="create", job=job, gap=True, reason=why)
    return ChangefeedPlan(action="create", job=job, reason=why + "; the table is empty")


def changefeed_sink(kafka_bootstrap: str, topic: str) -> str:
    """The sink URI of our changefeed: one fixed topic instead of one per table.

    https://www.cockroachlabs.com/docs/v25.4/changefeed-sinks#kafka
    """
    first_broker = kafka_bootstrap.split(",")[0]
    return f"kafka://{first_broker}?topic_name={topic}"


def configure_cluster(conn: psycopg.Connection[Any], license_key: str, organization: str) -> None:
    """Enable rangefeeds (changefeeds need them) and apply an optional licence."""
    # https://www.cockroachlabs.com/docs/stable/create-and-configure-changefeeds#enable-rangefeeds
    conn.execute("SET CLUSTER SETTING kv.rangefeed.enabled = true")
    if organization:
        # https://www.cockroachlabs.com/docs/stable/licensing-faqs#set-a-license
        conn.execute(_set_setting("cluster.organization", organization))
    if license_key:
        conn.execute(_set_setting("enterprise.license", license_key))


def _set_setting(name: str, value: str) -> sql.Composed:
    # Values are inlined as literals: placeholders are not accepted in every
    # CockroachDB statement (SET CLUSTER SETTING, CREATE CHANGEFEED options).
    return sql.SQL("SET CLUSTER SETTING {} = {}").format(sql.SQL(name), sql.Literal(value))


def find_changefeed(conn: psycopg.Connection[Any], sink: str) -> ChangefeedJob | None:
    """The changefeed job on `messages` that writes to `sink`, if any: an unfinished one
    before any finished one (a newer failed job must not hide a live one), then the newest."""
    # https://www.cockroachlabs.com/docs/v25.4/show-jobs#show-changefeed-jobs
    finished = sql.SQL(", ").join(sql.Literal(s) for s in sorted(FINISHED_STATUSES))
    query = sql.SQL(
        """
        SELECT job_id, status, high_water_timestamp::STRING
          FROM [SHOW CHANGEFEED JOBS]
         WHERE sink_uri LIKE %s
           AND array_to_string(full_table_names, ',') LIKE '%%.messages'
         ORDER BY status IN ({finished}), created DESC
         LIMIT 1
        """
    ).format(finished=finished)
    # Matched on scheme and topic, not the whole URI: SHOW CHANGEFEED JOBS may render
    # the URI it was given differently (redacted or reordered parameters).
    topic = sink.rsplit("topic_name=", 1)[-1]
    row = conn.execute(query, (f"kafka://%topic_name={topic}%",)).fetchone()
    return None if row is None else ChangefeedJob(int(row[0]), str(row[1]), row[2])


def _gc_ttl(conn: psycopg.Connection[Any]) -> int:
    # https://www.cockroachlabs.com/docs/v25.4/show-zone-configurations
    row = conn.execute("SHOW ZONE CONFIGURATION FROM TABLE messages").fetchone()
    return parse_gc_ttl(str(row[1])) if row else DEFAULT_GC_TTL_S


def _now_hlc(conn: psycopg.Connection[Any]) -> str:
    # https://www.cockroachlabs.com/docs/v25.4/functions-and-operators#system-info-functions
    row = conn.execute("SELECT cluster_logical_timestamp()::STRING").fetchone()
    return str(row[0]) if row else "0.0000000000"


def ensure_changefeed(
    conn: psycopg.Connection[Any], sink: str, on_gap: Callable[[FeedRestart], None]
) -> str:
    """Make sure exactly one live changefeed feeds `sink`; returns what it did.

    Note: there is no CREATE CHANGEFEED IF NOT EXISTS, so we look first (`plan_changefeed`).
    Before a changefeed that leaves a gap is created, `on_gap` gets the marker to write
    into the topic, so every record of the new job follows it; when it raises, nothing
    is created and setup fails.
    """
    job = find_changefeed(conn, sink)
    has_rows = conn.execute("SELECT EXISTS (SELECT 1 FROM messages)").fetchone()
    now = _now_hlc(conn)
    plan = plan_changefeed(
        job, table_has_rows=bool(has_rows and has_rows[0]), now_hlc=now, gc_ttl_s=_gc_ttl(conn)
    )
    if plan.action == "keep" and plan.job is not None:
        return f"changefeed {plan.job.job_id} kept: {plan.reason}"
    if plan.action == "resume" and plan.job is not None:
        # https://www.cockroachlabs.com/docs/v25.4/resume-job
        conn.execute(sql.SQL("RESUME JOB {}").format(sql.Literal(plan.job.job_id)))
        return f"changefeed {plan.job.job_id} resumed"
    statement = sql.SQL("CREATE CHANGEFEED FOR TABLE messages INTO {} WITH {}").format(
        sql.Literal(sink), sql.SQL(_CHANGEFEED_OPTIONS)
    )
    if plan.cursor:
        # https://www.cockroachlabs.com/docs/v25.4/create-changefeed#start-a-new-changefeed-where-another-ended
        try:
            row = conn.execute(
                sql.SQL("{}, cursor = {}").format(statement, sql.Literal(plan.cursor))
            ).fetchone()
            return f"changefeed {row[0] if row else '?'} created: {plan.reason}"
        except psycopg.Error as exc:
            # The cursor is refused once it is older than the GC threshold, which can be
            # reached earlier than gc.ttlseconds predicts; start afresh then.
            # https://www.cockroachlabs.com/docs/v25.4/create-changefeed#cursor
            plan = ChangefeedPlan(
                action="create",
                job=plan.job,
                gap=True,
                reason=f"creating from the high-water mark failed: {str(exc).strip()}",
            )
    if plan.gap:
        log.error(
            "CHANGEFEED RESTARTED WITH A GAP: rows committed while no changefeed ran are not "
            "in the feed; clients holding a feed position will be told to reset",
            extra={"reason": plan.reason, "previous_job": plan.job.job_id if plan.job else None},
        )
        on_gap(
            FeedRestart(
                reason=plan.reason,
                previous_job=plan.job.job_id if plan.job else None,
                previous_high_water=plan.job.high_water_timestamp if plan.job else None,
                at=now,
            )
        )
    row = conn.execute(statement).fetchone()
    return f"changefeed {row[0] if row else '?'} created: {plan.reason}"
