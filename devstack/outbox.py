"""The stand-in's outbox in PostgreSQL: the capture trigger, the commit clock, the reads.

A trigger on `messages` copies every change into `changefeed_outbox`; a deferred
constraint trigger stamps each transaction's rows at commit with the next value of
`changefeed_clock`, under the advisory lock `CHANGEFEED_CLOCK_LOCK` (devstack/standin.py
says why this gives commit order and exact resolved timestamps).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import psycopg

from feedsvc.schema import CHANGEFEED_CLOCK_LOCK

CHANNEL = "changefeed_outbox"
"""The NOTIFY channel the capture trigger wakes the stand-in on, once per transaction."""

log = logging.getLogger("changefeed-standin")

# Idempotent: safe to run from several stand-ins at once under the advisory lock.
INSTALL = [
    """
    CREATE TABLE IF NOT EXISTS changefeed_outbox (
        seq         bigserial PRIMARY KEY,
        id          uuid NOT NULL,
        op          char(1) NOT NULL,          -- 'u' insert or update, 'd' delete
        author      text,
        text        text,
        created_at  timestamptz,
        at          timestamptz,               -- the commit stamp, set at commit
        xid         bigint NOT NULL DEFAULT txid_current()
    )
    """,
    # An outbox made by an older stand-in stamped at insert time.
    "ALTER TABLE changefeed_outbox ALTER COLUMN at DROP NOT NULL, ALTER COLUMN at DROP DEFAULT",
    "ALTER TABLE changefeed_outbox ADD COLUMN IF NOT EXISTS xid bigint NOT NULL"
    " DEFAULT txid_current()",
    "CREATE INDEX IF NOT EXISTS changefeed_outbox_xid ON changefeed_outbox (xid)",
    # Also in feedsvc/schema.py (the api reads it); here too so the stand-in runs alone.
    """
    CREATE TABLE IF NOT EXISTS changefeed_clock (
        one   boolean PRIMARY KEY DEFAULT true CHECK (one),
        last  timestamptz NOT NULL
    )
    """,
    "INSERT INTO changefeed_clock (last) VALUES (clock_timestamp()) ON CONFLICT DO NOTHING",
    """
    CREATE OR REPLACE FUNCTION changefeed_capture() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO changefeed_outbox (id, op) VALUES (OLD.id, 'd');
        ELSE
            INSERT INTO changefeed_outbox (id, op, author, text, created_at)
            VALUES (NEW.id, 'u', NEW.author, NEW.text, NEW.created_at);
        END IF;
        -- Delivered at commit, once per transaction: wakes the stand-in at once.
        PERFORM pg_notify('changefeed_outbox', '');
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE OR REPLACE TRIGGER changefeed_capture
    AFTER INSERT OR UPDATE OR DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION changefeed_capture()
    """,
    # Runs at commit (deferred), once per transaction: the lock is held until the commit
    # is visible (transaction-level advisory locks are released at its end).
    f"""
    CREATE OR REPLACE FUNCTION changefeed_stamp() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        stamp timestamptz;
    BEGIN
        IF current_setting('changefeed.stamped', true) = txid_current()::text THEN
            RETURN NULL;
        END IF;
        PERFORM pg_advisory_xact_lock({CHANGEFEED_CLOCK_LOCK});
        UPDATE changefeed_clock
           SET last = greatest(clock_timestamp(), last + interval '1 microsecond')
        RETURNING last INTO stamp;
        UPDATE changefeed_outbox SET at = stamp WHERE xid = txid_current() AND at IS NULL;
        PERFORM set_config('changefeed.stamped', txid_current()::text, true);
        RETURN NULL;
    END
    $$
    """,
    # No CREATE OR REPLACE for constraint triggers.
    "DROP TRIGGER IF EXISTS changefeed_stamp ON changefeed_outbox",
    """
    CREATE CONSTRAINT TRIGGER changefeed_stamp
    AFTER INSERT ON changefeed_outbox DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION changefeed_stamp()
    """,
]

# Advance the commit clock as a writer would; once this commits, every row stamped at or
# before the value returned is committed and visible (see the module docstring).
TICK = """
    UPDATE changefeed_clock
       SET last = greatest(clock_timestamp(), last + interval '1 microsecond')
    RETURNING last
"""
READ_OUTBOX = """
    SELECT seq, id, op, author, text, created_at, at
      FROM changefeed_outbox ORDER BY at, seq LIMIT %s
"""


async def tick(conn: psycopg.AsyncConnection[Any]) -> datetime:
    """Advance the commit clock as a committing writer would; returns the new value.

    Note: once this transaction commits, every row stamped at or before the value is
    committed and visible (their writers held the lock until then) and every later stamp
    is greater.
    """
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({CHANGEFEED_CLOCK_LOCK})")
        cur = await conn.execute(TICK)
        row = await cur.fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


async def install(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Create the outbox and the trigger on `messages`, idempotently; False until the
    table `messages` exists (`python -m feedsvc setup` creates it)."""
    try:
        async with conn.transaction():
            # Two stand-ins starting together must not race on CREATE OR REPLACE.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('changefeed_standin'))")
            for statement in INSTALL:
                await conn.execute(statement)
    except psycopg.errors.UndefinedTable:
        log.warning("table messages does not exist yet; waiting for setup")
        return False
    return True
