"""The schema, and every statement that differs between CockroachDB and PostgreSQL.

CockroachDB runs in the product (compose); PostgreSQL, which speaks the same wire
protocol, stands in for it in native tests. The statements below are the only
place the two differ: the rest of feedsvc runs the SQL both understand.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from psycopg.crdb import CrdbConnection

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
    # until its commit is visible (scripts/changefeed_standin.py). While we hold it shared
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
    """Create the table and its index; safe to run again and concurrently."""
    for statement in COCKROACH_SCHEMA if is_cockroach(conn) else POSTGRES_SCHEMA:
        conn.execute(statement)


# --- CockroachDB only: the changefeed that turns committed rows into feed events ---


class ChangefeedJob(msgspec.Struct, frozen=True):
    """One row of `SHOW CHANGEFEED JOBS` that feeds our topic."""

    job_id: int
    status: str
    high_water_timestamp: str | None


# Options: https://www.cockroachlabs.com/docs/stable/create-changefeed#options
# `updated` puts the commit timestamp in every row; `resolved` emits watermarks;
# a `resolved` interval under 30 s needs `min_checkpoint_frequency` to match;
# `initial_scan = 'no'` because history is read from the table, not the topic.
_CHANGEFEED_OPTIONS = (
    "updated, resolved = '1s', min_checkpoint_frequency = '1s', initial_scan = 'no'"
)
# Statuses of a job that is, or will again be, emitting without our help.
# https://www.cockroachlabs.com/docs/stable/show-jobs#job-status
_LIVE = {"running", "pending", "pause-requested", "resume-requested", "reverting"}


def changefeed_sink(kafka_bootstrap: str, topic: str) -> str:
    """The sink URI of our changefeed: one fixed topic instead of one per table.

    https://www.cockroachlabs.com/docs/stable/changefeed-sinks#kafka
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
    """The newest changefeed job on `messages` that writes to `sink`, if any."""
    # https://www.cockroachlabs.com/docs/stable/show-jobs#show-changefeed-jobs
    row = conn.execute(
        """
        SELECT job_id, status, high_water_timestamp::STRING
          FROM [SHOW CHANGEFEED JOBS]
         WHERE sink_uri LIKE %s
           AND array_to_string(full_table_names, ',') LIKE '%%.messages'
         ORDER BY created DESC
         LIMIT 1
        """,
        # Matched on scheme and topic, not the whole URI: SHOW CHANGEFEED JOBS may render
        # the URI it was given differently (redacted or reordered parameters).
        (f"kafka://%topic_name={sink.rsplit('topic_name=', 1)[-1]}%",),
    ).fetchone()
    return None if row is None else ChangefeedJob(int(row[0]), str(row[1]), row[2])


def ensure_changefeed(conn: psycopg.Connection[Any], sink: str) -> str:
    """Make sure exactly one live changefeed feeds `sink`; returns what it did.

    Note: there is no CREATE CHANGEFEED IF NOT EXISTS, so we look first. A paused
    job is resumed; a failed one is recreated from its high-water timestamp so no
    committed row is skipped (the feed's relay drops the repeats).
    """
    job = find_changefeed(conn, sink)
    if job is not None and job.status in _LIVE:
        return f"changefeed {job.job_id} is {job.status}"
    if job is not None and job.status == "paused":
        # https://www.cockroachlabs.com/docs/stable/resume-job
        conn.execute(sql.SQL("RESUME JOB {}").format(sql.Literal(job.job_id)))
        return f"changefeed {job.job_id} resumed"
    statement = sql.SQL("CREATE CHANGEFEED FOR TABLE messages INTO {} WITH {}").format(
        sql.Literal(sink), sql.SQL(_CHANGEFEED_OPTIONS)
    )
    if job is not None and job.status == "failed" and job.high_water_timestamp:
        # https://www.cockroachlabs.com/docs/stable/create-changefeed#start-a-new-changefeed-where-another-ended
        statement = sql.SQL("{}, cursor = {}").format(
            statement, sql.Literal(job.high_water_timestamp)
        )
    row = conn.execute(statement).fetchone()
    created = row[0] if row else "?"
    return f"changefeed {created} created" + (
        f" from cursor of failed job {job.job_id}" if job else ""
    )
