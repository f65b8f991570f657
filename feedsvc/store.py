"""The message table (idempotent batch insert, point and keyset reads) and the key claims."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from feedsvc import schema
from feedsvc.config import Settings
from feedsvc.messages import Cursor, KeyClaim, Message

# SQLSTATEs worth retrying: serialization failure and statement completion unknown
# (https://www.cockroachlabs.com/docs/stable/transaction-retry-error-reference),
# and the unlicensed multi-node throttle (too many concurrent transactions,
# https://www.cockroachlabs.com/docs/stable/licensing-faqs#throttling).
TRANSIENT_SQLSTATES = frozenset({"40001", "40003", "XXC02"})

_COLUMNS = "id, author, text, created_at"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same statement later can succeed."""
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.ConnectionTimeout):
        # The connection was lost or could not be made; but psycopg files class 54 (a
        # statement over a limit, e.g. an index row too large) here too, and that
        # statement fails the same way every time.
        return (exc.sqlstate or "")[:2] != "54"
    return isinstance(exc, psycopg.Error) and exc.sqlstate in TRANSIENT_SQLSTATES


# SQLSTATE classes that blame a value, not the statement or the server: 22 data
# exception (e.g. a NUL in text), 23 integrity constraint violation, 54 program limit
# exceeded (e.g. an index row too large). https://www.postgresql.org/docs/current/errcodes-appendix.html
ROW_SQLSTATE_CLASSES = ("22", "23", "54")


def is_refusal(exc: BaseException) -> bool:
    """Whether the database refused the values of a row, so no retry of them can succeed.

    Note: psycopg raises `DataError` without a SQLSTATE for a value it cannot even
    send (PostgreSQL text cannot hold NUL). Any other error (undefined table, no
    privilege, a bug) is not a row's fault: dropping rows for it would lose them all.
    """
    if not isinstance(exc, psycopg.Error) or is_transient(exc):
        return False
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return True
    return (exc.sqlstate or "")[:2] in ROW_SQLSTATE_CLASSES


@asynccontextmanager
async def open_pool(settings: Settings, name: str) -> AsyncIterator[AsyncConnectionPool]:
    """A small pool; it opens without waiting, so a process starts while the DB is down.

    Note: the pool is kept small on purpose: an unlicensed multi-node CockroachDB
    cluster allows 5 concurrent transactions (ARCHITECTURE.md#licence-throttle).
    """
    pool: AsyncConnectionPool = AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_size,
        kwargs={"autocommit": True, "connect_timeout": 5},
        # How long `connection()` waits for a connection before PoolTimeout:
        # https://www.psycopg.org/psycopg3/docs/api/pool.html#psycopg_pool.ConnectionPool
        timeout=settings.db_timeout_s,
        name=name,
        open=False,
    )
    await pool.open(wait=False)
    try:
        yield pool
    finally:
        await pool.close()


@lru_cache(maxsize=64)
def _insert_statement(rows: int) -> str:
    values = ", ".join(["(%s, %s, %s, %s)"] * rows)
    return f"INSERT INTO messages ({_COLUMNS}) VALUES {values} ON CONFLICT (id) DO NOTHING"


@lru_cache(maxsize=64)
def _claim_statement(rows: int) -> str:
    # One statement, no transaction held open (ARCHITECTURE.md#licence-throttle). DO UPDATE,
    # not DO NOTHING: it waits for a concurrent claim of the same id and RETURNs the row
    # that won (PostgreSQL's DO NOTHING would return nothing, and a read in the same
    # statement would not see the other's row). It rewrites only the winner's own digest.
    # https://www.cockroachlabs.com/docs/stable/insert#on-conflict-clause,
    # https://www.postgresql.org/docs/current/sql-insert.html#SQL-ON-CONFLICT
    # The INSERT in a CTE lets the same statement say whether the message is stored:
    # https://www.cockroachlabs.com/docs/stable/common-table-expressions
    values = ", ".join(["(%s, %s, %s)"] * rows)
    return (
        "WITH claimed AS ("
        f"INSERT INTO key_claims (id, digest, created_at) VALUES {values} "
        "ON CONFLICT (id) DO UPDATE SET digest = key_claims.digest "
        "RETURNING id, digest, created_at) "
        "SELECT c.id, c.digest, c.created_at, m.id IS NOT NULL "
        "FROM claimed c LEFT JOIN messages m ON m.id = c.id"
    )


def _message(row: TupleRow) -> Message:
    # The session's time zone shapes how timestamps come back; the api speaks UTC only.
    return Message(id=row[0], author=row[1], text=row[2], created_at=row[3].astimezone(UTC))


class MessageStore:
    """Reads and writes of the `messages` table through a shared pool."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def insert(self, messages: Sequence[Message]) -> int:
        """Store messages whose id is not stored yet; returns how many were new.

        Note: one multi-row statement is one implicit transaction, so the batch is
        stored whole or not at all, and a retry after any failure is safe.
        """
        if not messages:
            return 0
        params: list[object] = []
        for m in messages:
            params += (m.id, m.author, m.text, m.created_at)
        async with self._pool.connection() as conn:
            cur = await conn.execute(_insert_statement(len(messages)), params)
            return max(cur.rowcount, 0)

    async def claim(self, claims: Sequence[KeyClaim]) -> dict[uuid.UUID, tuple[KeyClaim, bool]]:
        """Bind each claim's id to it unless bound already; by id, the binding that holds
        and whether the id's message is stored.

        Note: ids must be distinct (one statement cannot touch a row twice). Safe to
        repeat: a claim made again returns the first binding.
        """
        if not claims:
            return {}
        params: list[object] = []
        for c in claims:
            params += (c.id, c.digest, c.created_at)
        async with self._pool.connection() as conn:
            cur = await conn.execute(_claim_statement(len(claims)), params)
            rows = await cur.fetchall()
        return {
            row[0]: (KeyClaim(row[0], bytes(row[1]), row[2].astimezone(UTC)), bool(row[3]))
            for row in rows
        }

    async def get(self, message_id: uuid.UUID) -> Message | None:
        """One message by id."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id = %s", (message_id,)
            )
            row = await cur.fetchone()
        return None if row is None else _message(row)

    async def page(self, limit: int, before: Cursor | None = None) -> list[Message]:
        """Up to `limit` messages, newest first, strictly older than `before`."""
        where, params = "", [limit]
        if before is not None:
            where = "WHERE (created_at, id) < (%s, %s)"
            params = [before.created_at, before.id, limit]  # type: ignore[list-item]
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM messages {where} "
                "ORDER BY created_at DESC, id DESC LIMIT %s",
                params,
            )
            return [_message(row) for row in await cur.fetchall()]

    async def history(self, limit: int, attempts: int = 5) -> tuple[list[Message], str]:
        """The latest `limit` messages, newest first, and the read's snapshot time T.

        Note: T is exact (`feedsvc.schema.HistorySnapshot`): every message the read saw has
        a changefeed `updated` <= T, every message it did not see has `updated` > T.
        Returned as an HLC string `<wall ns>.<logical>`, like the changefeed's `updated`.
        """
        for attempt in range(1, attempts + 1):
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    dialect = schema.history_snapshot(conn)
                    for statement in dialect.begin:
                        await conn.execute(statement)
                    cur = await conn.execute(
                        f"SELECT {_COLUMNS} FROM messages "
                        "ORDER BY created_at DESC, id DESC LIMIT %s",
                        (limit,),
                    )
                    rows = await cur.fetchall()
                    cur2 = await conn.execute(dialect.snapshot_time)
                    found = await cur2.fetchone()
            except psycopg.Error as exc:
                if attempt == attempts or not is_transient(exc):
                    raise
                continue
            assert found is not None
            value = found[0]
            if isinstance(value, datetime):
                # The stand-in's `updated` of a timestamptz: microseconds as nanoseconds.
                micros = (value - _EPOCH) // timedelta(microseconds=1)
                value = f"{micros * 1000}.0000000000"
            return [_message(row) for row in rows], str(value)
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        """Raise unless the database answers a query."""
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1")
