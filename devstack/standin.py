"""Native stand-in for CockroachDB's changefeed: PostgreSQL rows -> `messages.committed`.

It produces exactly the records `CREATE CHANGEFEED FOR TABLE messages INTO 'kafka://...'
WITH updated, resolved` would (JSON format, wrapped envelope):
https://www.cockroachlabs.com/docs/stable/changefeed-messages
https://www.cockroachlabs.com/docs/stable/create-changefeed
https://www.cockroachlabs.com/docs/stable/changefeed-sinks (resolved: null key, every partition)

    key   ["<id>"]
    value {"after": {"author": ..., "created_at": ..., "id": ..., "text": ...}, "updated": "<hlc>"}
          {"after": null, "updated": "<hlc>"}          for a delete
          {"resolved": "<hlc>"}                        with a null key, about every second

How no committed row is ever missed, with any number of concurrent writers: a trigger on
`messages` (installed idempotently at start) copies every change into the stand-in's own
table `changefeed_outbox`; each round reads every outbox row visible now, produces them
(acks=all) and only then deletes them. A row whose transaction commits late is simply
still in the outbox next round, and the outbox is the stand-in's progress: a restart
re-sends at most the rows produced but not yet deleted (at-least-once, like the changefeed).

`updated` is a commit timestamp, in commit order, as CockroachDB's is (PostgreSQL has no
HLC; the insert's clock_timestamp() is not commit order): a deferred constraint trigger
on the outbox runs at commit, takes the advisory lock `CHANGEFEED_CLOCK_LOCK` exclusively
(held until the commit is visible) and stamps the transaction's rows with the next value
of `changefeed_clock` (strictly increasing). So every row stamped at or before a value V
is committed and visible once V can be read under that lock, and every later stamp is
greater than V. The history read of `GET /feed` uses this for its exact snapshot time
(feedsvc/schema.py, `POSTGRES_SNAPSHOT`); the resolved timestamps use it too: a round
first advances the clock itself under the exclusive lock (R), then reads the outbox, in
which every row stamped at or before R is now visible; once they are all sent, R is.

SIGUSR1 simulates a changefeed restart: the last STANDIN_DUPLICATE_BURST rows sent (any
number, e.g. 50,000) are sent again before anything else, and no resolved record is sent
until they are; the next resolved is above every earlier one, as a restarted job resumes
from its checkpoint and emits resolved timestamps only as its high-water mark advances.

Environment: FEED_DATABASE_URL, FEED_KAFKA_BOOTSTRAP (see feedsvc/config.py), and
    STANDIN_POLL_S            fallback poll interval; NOTIFY wakes it sooner (1.0)
    STANDIN_RESOLVED_S        seconds between resolved records (1.0)
    STANDIN_DUPLICATE_EVERY   after every N rows, send an earlier row again (0: never)
    STANDIN_DUPLICATE_BURST   rows SIGUSR1 sends again, as a changefeed restart would (20;
                              the stand-in keeps that many recent rows in memory)
    STANDIN_TOPIC             the topic to produce to (messages.committed; tests isolate)
Rows committed before the first start are not sent (as with `initial_scan = 'no'`).
SIGUSR1 re-sends the last STANDIN_DUPLICATE_BURST rows; SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from feedsvc.config import load_settings
from feedsvc.kafka import start_with_retry
from feedsvc.schema import CHANGEFEED_CLOCK_LOCK

TOPIC = "messages.committed"
CHANNEL = "changefeed_outbox"
BATCH = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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


@dataclass(frozen=True)
class Options:
    """The stand-in's knobs, from the environment."""

    database_url: str
    bootstrap: str
    poll_s: float = 1.0
    resolved_s: float = 1.0
    duplicate_every: int = 0
    duplicate_burst: int = 20
    topic: str = TOPIC

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Options:
        """Read FEED_* through feedsvc's settings and STANDIN_* here; fails naming the variable."""
        settings = load_settings(environ)
        values: dict[str, Any] = {}
        kinds: tuple[tuple[str, type[float | int | str]], ...] = (
            ("poll_s", float),
            ("resolved_s", float),
            ("duplicate_every", int),
            ("duplicate_burst", int),
            ("topic", str),
        )
        for name, kind in kinds:
            raw = environ.get(f"STANDIN_{name.upper()}")
            if raw is not None:
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise SystemExit(
                        f"STANDIN_{name.upper()}={raw!r} is not a {kind.__name__}"
                    ) from None
        return cls(settings.database_url, settings.kafka_bootstrap, **values)


def rfc3339nano(value: datetime) -> str:
    """A TIMESTAMPTZ as CockroachDB's changefeed JSON renders it (Go RFC3339Nano, UTC).

    Note: CockroachDB's tree.AsJSON formats TIMESTAMPTZ with time.RFC3339Nano, which
    drops trailing zeros of the fraction (and the dot when it is zero) and writes Z.
    """
    value = value.astimezone(UTC)
    fraction = f"{value.microsecond:06d}".rstrip("0")
    return value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def hlc(value: datetime) -> str:
    """An HLC timestamp string: wall-clock nanoseconds, a dot, a 10-digit logical counter."""
    micros = (value - _EPOCH) // timedelta(microseconds=1)
    return f"{micros * 1000}.0000000000"


def record_key(message_id: uuid.UUID) -> bytes:
    """The changefeed key: the primary key columns as a JSON array."""
    return json.dumps([str(message_id)]).encode()


def row_value(
    message_id: uuid.UUID, author: str, text: str, created_at: datetime, updated: datetime
) -> bytes:
    """The wrapped envelope of an insert or update."""
    after = {
        "author": author,
        "created_at": rfc3339nano(created_at),
        "id": str(message_id),
        "text": text,
    }
    return json.dumps({"after": after, "updated": hlc(updated)}, sort_keys=True).encode()


def delete_value(updated: datetime) -> bytes:
    """The wrapped envelope of a delete."""
    return json.dumps({"after": None, "updated": hlc(updated)}).encode()


def resolved_value(resolved: datetime) -> bytes:
    """A resolved record's value."""
    return json.dumps({"resolved": hlc(resolved)}).encode()


class Standin:
    """Moves committed rows from the outbox into Kafka, plus resolved records."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self._recent: deque[tuple[bytes, bytes]] = deque(maxlen=max(1000, options.duplicate_burst))
        self._since_duplicate = 0
        self._burst = 0
        self._last_resolved: datetime | None = None
        self._pending: datetime | None = None
        self._next_resolved = 0.0
        self.rows_sent = 0

    def request_duplicates(self) -> None:
        """Re-send the most recent rows on the next round (SIGUSR1)."""
        self._burst += self.options.duplicate_burst
        self.wake.set()

    async def run(self) -> None:
        """Install the capture, then loop until `stopping` is set, reconnecting as needed.

        Note: like a changefeed, it outlives database restarts; the outbox holds every
        row not yet produced, so a reconnect loses nothing (and may repeat a few rows).
        """
        while not self.stopping.is_set():
            try:
                await self._run_connected()
            except psycopg.OperationalError as exc:
                log.warning("database connection lost (%s); reconnecting", str(exc).strip())
                if await _sleep_unless(self.stopping, 1.0):
                    return

    async def _run_connected(self) -> None:
        opts = self.options
        async with await psycopg.AsyncConnection.connect(
            opts.database_url, autocommit=True
        ) as conn:
            while not await install(conn):
                if await _sleep_unless(self.stopping, 1.0):
                    return
            producer = await start_producer(opts.bootstrap, self.stopping)
            if producer is None:
                return
            try:
                async with await psycopg.AsyncConnection.connect(
                    opts.database_url, autocommit=True
                ) as listener:
                    await listener.execute(f"LISTEN {CHANNEL}")
                    listen = asyncio.create_task(self._listen(listener))
                    try:
                        await self._loop(conn, producer)
                    finally:
                        listen.cancel()
            finally:
                await producer.stop()

    async def _listen(self, listener: psycopg.AsyncConnection[Any]) -> None:
        async for _ in listener.notifies():
            self.wake.set()

    async def _loop(self, conn: psycopg.AsyncConnection[Any], producer: AIOKafkaProducer) -> None:
        while not self.stopping.is_set():
            self.wake.clear()
            full = await self.round(conn, producer)
            if full:
                continue  # a full batch: more is waiting
            timeout = min(self.options.poll_s, max(0.0, self._next_resolved - time.monotonic()))
            waits = [
                asyncio.create_task(self.wake.wait()),
                asyncio.create_task(self.stopping.wait()),
            ]
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()

    async def round(self, conn: psycopg.AsyncConnection[Any], producer: AIOKafkaProducer) -> bool:
        """Send every visible outbox row, then maybe a resolved record; True if more wait."""
        resolved = self._pending
        if resolved is None and time.monotonic() >= self._next_resolved:
            resolved = await tick(conn)  # before the read: every row stamped <= it is visible
        cur = await conn.execute(READ_OUTBOX, (BATCH,))
        rows = await cur.fetchall()
        sends = []
        for _seq, message_id, op, author, text, created_at, at in rows:
            key = record_key(message_id)
            value = (
                delete_value(at)
                if op == "d"
                else row_value(message_id, author, text, created_at, at)
            )
            sends.append(await producer.send(self.options.topic, value=value, key=key))
            self._recent.append((key, value))
            self._since_duplicate += 1
            every = self.options.duplicate_every
            if every and self._since_duplicate >= every:
                # An earlier row again, as the changefeed does after a restart.
                self._since_duplicate = 0
                dup_key, dup_value = random.choice(self._recent)
                sends.append(await producer.send(self.options.topic, value=dup_value, key=dup_key))
        if self._burst:
            # A restart: the recent rows again, all before the next resolved record.
            for key, value in list(self._recent)[-self._burst :]:
                sends.append(await producer.send(self.options.topic, value=value, key=key))
            self._burst = 0
        if sends:
            await asyncio.gather(*sends)  # acks=all: the rows are in Kafka
            await conn.execute(
                "DELETE FROM changefeed_outbox WHERE seq = ANY(%s)", ([row[0] for row in rows],)
            )
            self.rows_sent += len(rows)
        full = len(rows) == BATCH
        # Every row stamped at or before `resolved` was visible to the read: once none is
        # left unread (the batch was not full), they are all in Kafka.
        self._pending = resolved if full else None
        if resolved is not None and not full:
            await self._resolve(producer, resolved)
        return full

    async def _resolve(self, producer: AIOKafkaProducer, resolved: datetime) -> None:
        if self._last_resolved is not None and resolved <= self._last_resolved:
            return
        partitions = sorted(await producer.partitions_for(self.options.topic) or {0})
        value = resolved_value(resolved)
        sent = [
            await producer.send(self.options.topic, value=value, key=None, partition=p)
            for p in partitions
        ]
        await asyncio.gather(*sent)
        self._last_resolved = resolved
        self._next_resolved = time.monotonic() + self.options.resolved_s


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


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stopping` was set meanwhile."""
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def start_producer(bootstrap: str, stopping: asyncio.Event) -> AIOKafkaProducer | None:
    """An idempotent acks=all producer, started once Kafka answers; None if `stopping` is
    set first.

    Note: aiokafka's start() fails at once while Kafka is down; feedsvc's own
    `start_with_retry` waits for the broker, for a bounded number of attempts. Like a
    changefeed, the stand-in outlives any outage: when those run out it starts over.
    """
    while not stopping.is_set():
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        try:
            if await _unless_stopping(start_with_retry(producer.start, "standin"), stopping):
                return producer
        except KafkaError as exc:
            log.warning("kafka not reachable (%s); starting over", exc)
        await producer.stop()
        if await _sleep_unless(stopping, 1.0):
            return None
    return None


async def _unless_stopping(work: Coroutine[Any, Any, None], stopping: asyncio.Event) -> bool:
    """Run `work` to its end (True; its error is raised) unless `stopping` is set first
    (False; `work` is cancelled), so SIGTERM during a Kafka outage stops the stand-in at once.
    """
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False
    task.result()
    return True


async def main_async(options: Options) -> None:
    """Run until SIGTERM or SIGINT."""
    standin = Standin(options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, standin.stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, standin.request_duplicates)
    log.info("changefeed stand-in started, producing to %s", options.topic)
    await standin.run()
    log.info("changefeed stand-in stopped after %d rows", standin.rows_sent)


def main() -> int:
    """`python -m devstack.standin`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main_async(Options.from_env(os.environ)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
