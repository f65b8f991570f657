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

The records' bytes are `devstack.envelope`'s; the trigger, the clock and the outbox's SQL
are `devstack.outbox`'s; this module is the process that moves rows between them.

SIGUSR1 simulates a changefeed restart: the last STANDIN_DUPLICATE_BURST rows sent (any
number, e.g. 50,000) are sent again before anything else, and no resolved record is sent
until they are; the next resolved is above every earlier one, as a restarted job resumes
from its checkpoint and emits resolved timestamps only as its high-water mark advances.

Kind or strict: by default the stand-in is kinder than CockroachDB in three ways, each
a knob; the e2e tests run it strict (tests/e2e/conftest.py, docs/testing.md#what-is-proven-where):
- `updated` and `resolved` HLCs: microsecond walls with logical 0, where CockroachDB's
  have nanosecond walls and logical counters above 0 (STANDIN_HLC=cockroach);
- resolved records about 1 s behind the commits, where CockroachDB's trail by its closed
  timestamp target, `kv.closed_timestamp.target_duration`, 3 s by default
  (STANDIN_RESOLVED_LAG_S=3;
  https://www.cockroachlabs.com/docs/v25.4/cluster-settings#setting-kv-closed-timestamp-target-duration);
- a restart's repeats in the order they were first sent, where CockroachDB's catch-up
  emits ranges side by side: each key's records in order, the repeat of a key before
  its newer records, keys interleaved (STANDIN_RESTART_ORDER=cockroach;
  https://www.cockroachlabs.com/docs/v25.4/changefeed-messages#ordering-and-delivery-guarantees).

Environment: FEED_DATABASE_URL, FEED_KAFKA_BOOTSTRAP (see feedsvc/config.py), and
    STANDIN_POLL_S            fallback poll interval; NOTIFY wakes it sooner (1.0)
    STANDIN_RESOLVED_S        seconds between resolved records (1.0)
    STANDIN_RESOLVED_LAG_S    seconds a resolved record trails the commits it covers (0)
    STANDIN_HLC               micros (kind, the default) or cockroach (strict)
    STANDIN_RESTART_ORDER     sent (kind, the default) or cockroach (strict)
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
import logging
import os
import random
import signal
import sys
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from devstack.envelope import delete_value, record_key, resolved_value, row_value
from devstack.outbox import CHANNEL, READ_OUTBOX, install, tick
from feedsvc.config import load_settings
from feedsvc.kafka import start_with_retry

TOPIC = "messages.committed"
BATCH = 1000
RESTARTS = ("sent", "cockroach")
"""STANDIN_RESTART_ORDER's choices: the repeats as first sent, or as CockroachDB orders them."""

log = logging.getLogger("changefeed-standin")


@dataclass(frozen=True)
class Options:
    """The stand-in's knobs, from the environment."""

    database_url: str
    bootstrap: str
    poll_s: float = 1.0
    resolved_s: float = 1.0
    resolved_lag_s: float = 0.0
    hlc: str = "micros"
    restart_order: str = "sent"
    duplicate_every: int = 0
    duplicate_burst: int = 20
    topic: str = TOPIC

    def __post_init__(self) -> None:
        for name, allowed in (("hlc", ("micros", "cockroach")), ("restart_order", RESTARTS)):
            if getattr(self, name) not in allowed:
                raise SystemExit(
                    f"STANDIN_{name.upper()}={getattr(self, name)!r} is not one of {allowed}"
                )

    @property
    def strict_hlc(self) -> bool:
        """Whether HLCs have CockroachDB's nanosecond walls and logical counters."""
        return self.hlc == "cockroach"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Options:
        """Read FEED_* through feedsvc's settings and STANDIN_* here; fails naming the variable."""
        settings = load_settings(environ)
        values: dict[str, Any] = {}
        kinds: tuple[tuple[str, type[float | int | str]], ...] = (
            ("poll_s", float),
            ("resolved_s", float),
            ("resolved_lag_s", float),
            ("hlc", str),
            ("restart_order", str),
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
        # Commit-clock values every row at or below which is in Kafka, with when they
        # were; each is resolved once it is STANDIN_RESOLVED_LAG_S old.
        self._closed: deque[tuple[float, datetime]] = deque()
        self._random = random.Random()
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
            due = self._next_resolved
            if self._closed:
                due = min(due, self._closed[0][0] + self.options.resolved_lag_s)
            timeout = min(self.options.poll_s, max(0.0, due - time.monotonic()))
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
        strict = self.options.strict_hlc
        repeats = list(self._recent)[-self._burst :] if self._burst else []
        outgoing: list[tuple[bytes, bytes]] = []
        for _seq, message_id, op, author, text, created_at, at in rows:
            key = record_key(message_id)
            value = (
                delete_value(at, strict=strict)
                if op == "d"
                else row_value(message_id, author, text, created_at, at, strict=strict)
            )
            outgoing.append((key, value))
            self._recent.append((key, value))
            self._since_duplicate += 1
            every = self.options.duplicate_every
            if every and self._since_duplicate >= every:
                # An earlier row again, as the changefeed does after a restart.
                self._since_duplicate = 0
                outgoing.append(self._random.choice(self._recent))
        if repeats:
            # A restart: the recent rows again, all before the next resolved record.
            if self.options.restart_order == "cockroach":
                outgoing = interleave_by_key(repeats, outgoing, self._random)
            else:
                outgoing += repeats
            self._burst = 0
        sends = [
            await producer.send(self.options.topic, value=value, key=key) for key, value in outgoing
        ]
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
        now = time.monotonic()
        if resolved is not None and not full:
            self._closed.append((now, resolved))
            self._next_resolved = now + self.options.resolved_s
        due = None
        while self._closed and self._closed[0][0] + self.options.resolved_lag_s <= now:
            due = self._closed.popleft()[1]
        if due is not None:
            await self._resolve(producer, due)
        return full

    async def _resolve(self, producer: AIOKafkaProducer, resolved: datetime) -> None:
        if self._last_resolved is not None and resolved <= self._last_resolved:
            return
        partitions = sorted(await producer.partitions_for(self.options.topic) or {0})
        value = resolved_value(resolved, strict=self.options.strict_hlc)
        sent = [
            await producer.send(self.options.topic, value=value, key=None, partition=p)
            for p in partitions
        ]
        await asyncio.gather(*sent)
        self._last_resolved = resolved


def interleave_by_key(
    repeats: list[tuple[bytes, bytes]], fresh: list[tuple[bytes, bytes]], rng: random.Random
) -> list[tuple[bytes, bytes]]:
    """`repeats` then `fresh` as a restarted changefeed emits them: each key's records in
    their order (its repeats before its newer records), the keys interleaved at random."""
    queues: dict[bytes, deque[tuple[bytes, bytes]]] = {}
    for key, value in (*repeats, *fresh):
        queues.setdefault(key, deque()).append((key, value))
    keys = list(queues)
    out: list[tuple[bytes, bytes]] = []
    while keys:
        index = rng.randrange(len(keys))
        queue = queues[keys[index]]
        out.append(queue.popleft())
        if not queue:
            keys[index] = keys[-1]
            keys.pop()
    return out


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
