"""The changefeed stand-in puts every committed row into Kafka in CockroachDB's format."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord
from psycopg_pool import AsyncConnectionPool

from devstack import STANDIN, KafkaBroker, Postgres, Service
from devstack.poll import Timeout, wait_for, wait_until
from feedsvc.relay.changefeed import Delete, Gap, Resolved, Row, decode_record, hlc_value
from feedsvc.relay.fanout import Fanout
from feedsvc.store import MessageStore
from tests.support import native_only

pytestmark = [pytest.mark.stack, native_only]

HLC = re.compile(r"^[0-9]{19}\.[0-9]{10}$")
# The lead's schema (feedsvc/schema.py) has the same columns; this module needs no setup.
SCHEMA = """
    CREATE TABLE IF NOT EXISTS messages (
        id uuid PRIMARY KEY, author text NOT NULL, text text NOT NULL,
        created_at timestamptz NOT NULL
    )
"""

Records = list[ConsumerRecord[bytes, bytes]]

# The stand-in as strict as CockroachDB (devstack/standin.py): nanosecond walls and
# logical counters, resolved records 3 s behind, a restart's repeats in CockroachDB's order.
STRICT = {
    "STANDIN_HLC": "cockroach",
    "STANDIN_RESOLVED_LAG_S": "3",
    "STANDIN_RESTART_ORDER": "cockroach",
}


class Feed:
    """One database with `messages`, one topic, and a stand-in process between them."""

    def __init__(self, root: Path, postgres: Postgres, kafka: KafkaBroker, **env: str) -> None:
        name = f"standin_{uuid.uuid4().hex[:8]}"
        postgres.create_database(name)
        self.url = postgres.url(name)
        self.topic = f"committed.{name}"
        self.kafka = kafka
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(SCHEMA)
        anyio.run(_create_topic, kafka.bootstrap, self.topic)
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("FEED_", "STANDIN_"))}
        environ |= {
            "FEED_DATABASE_URL": self.url,
            "FEED_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "STANDIN_TOPIC": self.topic,
            "STANDIN_RESOLVED_S": "0.3",
            **env,
        }
        self.service = Service(
            f"standin-{name}",
            [sys.executable, "-m", STANDIN],
            environ,
            root / "logs" / f"{name}.log",
        )

    def start(self) -> None:
        """Start the stand-in; returns once its trigger captures rows."""
        self.service.start()
        with psycopg.connect(self.url, autocommit=True) as conn:

            def installed() -> bool:
                assert self.service.running, self.service.log_tail()
                found = "SELECT 1 FROM pg_trigger WHERE tgname = 'changefeed_capture'"
                return conn.execute(found).fetchone() is not None

            wait_until(installed, 30, "the stand-in to install its trigger")

    def stop(self) -> None:
        assert self.service.terminate(15.0) == 0, self.service.log_tail()

    def read(self, until: Callable[[Records], bool], within: float = 30.0) -> Records:
        """All records of the topic from the start, once `until` holds of them."""
        try:
            return anyio.run(_read, self.kafka.bootstrap, self.topic, until, within)
        except Timeout as exc:
            raise AssertionError(f"{exc}; stand-in log:\n{self.service.log_tail()}") from None


@pytest.fixture(scope="module")
def feed(root: Path, postgres: Postgres, kafka: KafkaBroker) -> Iterator[Feed]:
    f = Feed(root, postgres, kafka, **STRICT)
    f.start()
    yield f
    f.stop()


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _read(
    bootstrap: str, topic: str, until: Callable[[Records], bool], within: float
) -> Records:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: Records = []

        async def more() -> Records:
            batch = await consumer.getmany(tp, timeout_ms=200)
            records.extend(batch.get(tp, []))
            return records

        # getmany itself waits up to 200 ms for records: no pause between reads.
        return await wait_for(more, until, within, f"the records of {topic}", interval=0)
    finally:
        await consumer.stop()


def _ids(records: Records) -> list[uuid.UUID]:
    """Message ids of the row records, in topic order, repeats kept."""
    out = []
    for record in records:
        decoded = decode_record(record.key, record.value)
        if isinstance(decoded, Row):
            out.append(decoded.message.id)
    return out


def _has_all(ids: set[uuid.UUID]) -> Callable[[Records], bool]:
    return lambda records: ids <= set(_ids(records))


def _insert(url: str, rows: list[tuple[uuid.UUID, str, str, datetime]]) -> None:
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            "INSERT INTO messages (id, author, text, created_at) VALUES (%s, %s, %s, %s)", rows
        )


def _message(n: int) -> tuple[uuid.UUID, str, str, datetime]:
    created = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(microseconds=123_450 + n)
    return uuid.uuid4(), "ann", f"line {n}\nsecond line \u00e9", created


async def _concurrent_writers(url: str, writers: int, per_writer: int) -> set[uuid.UUID]:
    """Several connections committing single rows and batches at once."""
    ids: set[uuid.UUID] = set()

    async def writer(w: int) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for n in range(per_writer):
                row = _message(w * 1000 + n)
                ids.add(row[0])
                await conn.execute(
                    "INSERT INTO messages (id, author, text, created_at) VALUES (%s, %s, %s, %s)",
                    row,
                )

    async def late_committer() -> None:
        # Takes its sequence numbers first and commits last: must not be skipped.
        async with await psycopg.AsyncConnection.connect(url) as conn:
            rows = [_message(900_000 + n) for n in range(5)]
            ids.update(row[0] for row in rows)
            async with conn.transaction():
                await conn.cursor().executemany(
                    "INSERT INTO messages (id, author, text, created_at) VALUES (%s, %s, %s, %s)",
                    rows,
                )
                await anyio.sleep(1.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(late_committer)
        await anyio.sleep(0.1)
        for w in range(writers):
            tg.start_soon(writer, w)
    return ids


def test_concurrent_commits_all_arrive_in_changefeed_format(feed: Feed) -> None:
    """Rows committed from many connections at once, one of them late, all reach the topic."""
    ids = anyio.run(_concurrent_writers, feed.url, 6, 40)
    records = feed.read(_has_all(ids))
    rows = {}
    for record in records:
        decoded = decode_record(record.key, record.value)
        if isinstance(decoded, Row) and decoded.message.id in ids:
            rows[decoded.message.id] = (record, decoded)
    assert set(rows) == ids
    with psycopg.connect(feed.url) as conn:
        stored = {
            r[0]: r[1:]
            for r in conn.execute("SELECT id, author, text, created_at FROM messages").fetchall()
        }
    for message_id, (record, decoded) in rows.items():
        assert record.key == f'["{message_id}"]'.encode()
        value = json.loads(record.value)
        assert set(value) == {"after", "updated"}
        assert HLC.match(value["updated"])
        assert set(value["after"]) == {"id", "author", "text", "created_at"}
        # CockroachDB renders TIMESTAMPTZ as Go's RFC3339Nano in UTC.
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z", value["after"]["created_at"]
        )
        message = decoded.message
        assert (message.author, message.text, message.created_at) == stored[message_id]


def test_resolved_records_follow_every_earlier_commit(feed: Feed) -> None:
    """Resolved records (null key) come about every interval; none precedes an older row."""
    row = _message(1)
    _insert(feed.url, [row])

    def two_resolved_after_row(records: Records) -> bool:
        ids = _ids(records)
        if row[0] not in ids:
            return False
        after = records[[r.key for r in records].index(f'["{row[0]}"]'.encode()) :]
        return sum(1 for r in after if r.key is None) >= 2

    records = feed.read(two_resolved_after_row)
    resolved_so_far = ""
    for record in records:
        decoded = decode_record(record.key, record.value)
        if isinstance(decoded, Resolved):
            assert record.key is None
            assert json.loads(record.value) == {"resolved": decoded.hlc}
            resolved_so_far = max(resolved_so_far, decoded.hlc, key=_hlc_key)
        else:
            assert not isinstance(decoded, Gap)
            assert not isinstance(decoded, Delete) or decoded.updated
            assert decoded.updated is not None
            # A changefeed never sends a row at or below a resolved timestamp it sent.
            assert _hlc_key(decoded.updated) > _hlc_key(resolved_so_far)


def _hlc_key(hlc: str) -> tuple[int, int]:
    if not hlc:
        return (-1, -1)
    wall, logical = hlc.split(".")
    return int(wall), int(logical)


def test_strict_updated_has_nanosecond_walls_and_logical_counters(feed: Feed) -> None:
    """Strict, every `updated` has a wall that is no whole microsecond and a counter above 0."""
    rows = [_message(3 + n) for n in range(5)]
    _insert(feed.url, rows)
    ids = {row[0] for row in rows}
    records = feed.read(_has_all(ids))
    mine = [json.loads(r.value)["updated"] for r in records if r.key is not None]
    assert mine
    for updated in mine:
        wall, logical = updated.split(".")
        assert HLC.match(updated) and int(wall) % 1000 != 0 and int(logical) > 0, updated


def test_strict_resolved_trails_its_rows_by_the_lag(feed: Feed) -> None:
    """Strict, the first resolved record covering a row comes about 3 s after the row."""
    row = _message(4)
    _insert(feed.url, [row])
    key = f'["{row[0]}"]'.encode()

    def covered(records: Records) -> bool:
        found = [r for r in records if r.key == key]
        if not found:
            return False
        updated = hlc_value(json.loads(found[0].value)["updated"])
        return any(
            r.key is None and hlc_value(json.loads(r.value)["resolved"]) >= updated for r in records
        )

    records = feed.read(covered)
    sent = next(r for r in records if r.key == key)
    updated = hlc_value(json.loads(sent.value)["updated"])
    first = next(
        r
        for r in records
        if r.key is None and hlc_value(json.loads(r.value)["resolved"]) >= updated
    )
    assert first.timestamp - sent.timestamp >= 2500, (sent.timestamp, first.timestamp)


def test_delete_is_after_null(feed: Feed) -> None:
    """Deleting a row produces `{"after": null, "updated": ...}` under its key."""
    row = _message(2)
    _insert(feed.url, [row])
    with psycopg.connect(feed.url) as conn:
        conn.execute("DELETE FROM messages WHERE id = %s", (row[0],))
    key = f'["{row[0]}"]'.encode()
    records = feed.read(lambda rs: sum(1 for r in rs if r.key == key) >= 2)
    mine = [r for r in records if r.key == key]
    assert isinstance(decode_record(mine[0].key, mine[0].value), Row)
    assert decode_record(mine[1].key, mine[1].value) == Delete(
        id=row[0], updated=json.loads(mine[1].value)["updated"]
    )
    assert json.loads(mine[1].value)["after"] is None


def test_sigusr1_sends_recent_rows_again(feed: Feed) -> None:
    """On SIGUSR1 the stand-in repeats recent rows, byte for byte, as a changefeed restart."""
    rows = [_message(10 + n) for n in range(3)]
    _insert(feed.url, rows)
    ids = {row[0] for row in rows}
    feed.read(_has_all(ids))
    pid = feed.service.pid
    assert pid is not None
    os.kill(pid, signal.SIGUSR1)

    def repeated(records: Records) -> bool:
        seen = _ids(records)
        return all(seen.count(i) >= 2 for i in ids)

    records = feed.read(repeated)
    by_key: dict[bytes | None, set[bytes | None]] = {}
    for record in records:
        by_key.setdefault(record.key, set()).add(record.value)
    assert all(len(by_key[f'["{i}"]'.encode()]) == 1 for i in ids), "a repeat differs"


def test_restart_resumes_without_resending_everything(
    root: Path, postgres: Postgres, kafka: KafkaBroker
) -> None:
    """Rows committed while the stand-in is down arrive after it restarts; old ones once."""
    feed = Feed(root, postgres, kafka)
    feed.start()
    before = [_message(20 + n) for n in range(5)]
    _insert(feed.url, before)
    feed.read(_has_all({row[0] for row in before}))
    feed.stop()
    during = [_message(30 + n) for n in range(5)]
    _insert(feed.url, during)
    feed.start()
    try:
        ids = feed.read(_has_all({row[0] for row in during}))
    finally:
        feed.stop()
    seen = _ids(ids)
    assert all(seen.count(row[0]) == 1 for row in before + during)


def test_duplicate_every_n_rows(root: Path, postgres: Postgres, kafka: KafkaBroker) -> None:
    """With STANDIN_DUPLICATE_EVERY=N, one earlier row is sent again after every N rows."""
    feed = Feed(root, postgres, kafka, STANDIN_DUPLICATE_EVERY="4")
    feed.start()
    try:
        rows = [_message(40 + n) for n in range(12)]
        _insert(feed.url, rows)
        records = feed.read(lambda rs: len(_ids(rs)) >= 15)
    finally:
        feed.stop()
    seen = _ids(records)
    assert set(seen) == {row[0] for row in rows}
    assert len(seen) == 15


def _decoded(records: Records) -> list[tuple[int, Row | Delete | Resolved | Gap]]:
    return [(r.offset, decode_record(r.key, r.value)) for r in records]


def test_updated_is_commit_order(feed: Feed) -> None:
    """A transaction that inserts first and commits last gets the later `updated`, one per
    transaction, as CockroachDB's commit timestamps (the insert's clock would be earlier)."""
    url = feed.url
    late_rows = [_message(50 + n) for n in range(3)]
    early_row = _message(60)

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(url) as late, late.transaction():
            await late.cursor().executemany(
                "INSERT INTO messages (id, author, text, created_at) VALUES (%s, %s, %s, %s)",
                late_rows,
            )
            _insert(url, [early_row])  # commits while `late` is still open

    anyio.run(run)
    ids = {row[0] for row in [*late_rows, early_row]}
    updated = {
        event.message.id: hlc_value(event.updated or "")
        for _, event in _decoded(feed.read(_has_all(ids)))
        if isinstance(event, Row) and event.message.id in ids
    }
    late = {updated[row[0]] for row in late_rows}
    assert len(late) == 1, "one transaction, one commit timestamp"
    assert late.pop() > updated[early_row[0]]


def test_resolved_is_placed_as_the_changefeed_places_it(feed: Feed) -> None:
    """Resolved timestamps increase, and each follows every row at or below it."""
    rows = [_message(70 + n) for n in range(20)]
    anyio.run(_concurrent_writers, feed.url, 4, 5)
    _insert(feed.url, rows)
    last = rows[-1][0]
    records = _decoded(feed.read(lambda rs: _resolved_after(rs, last)))
    highest = 0
    first_seen: dict[uuid.UUID, int] = {}
    for _, event in records:
        if isinstance(event, Row) and event.message.id not in first_seen:
            first_seen[event.message.id] = hlc_value(event.updated or "")
            assert first_seen[event.message.id] > highest, "a new row at or below a resolved"
        elif isinstance(event, Resolved):
            assert hlc_value(event.hlc) >= highest
            highest = hlc_value(event.hlc)


def _resolved_after(records: Records, message_id: uuid.UUID) -> bool:
    """Whether a resolved record follows the row of `message_id`."""
    seen = False
    for _, event in _decoded(records):
        if isinstance(event, Row) and event.message.id == message_id:
            seen = True
        elif isinstance(event, Resolved) and seen:
            return True
    return False


def test_restart_window_is_dropped_by_every_relay(
    root: Path, postgres: Postgres, kafka: KafkaBroker
) -> None:
    """A simulated changefeed restart re-sends the last 3,000 rows (far past the relay's
    100-offset window); a relay from offset 0 and one from mid-topic publish each row once,
    and decide alike from where the late one is exact."""
    feed = Feed(root, postgres, kafka, STANDIN_DUPLICATE_BURST="3000")
    feed.start()
    try:
        batches = [[_message(1000 * b + n) for n in range(100)] for b in range(30)]
        for batch in batches:
            _insert(feed.url, batch)
        ids = {row[0] for batch in batches for row in batch}
        feed.read(lambda rs: _resolved_after(rs, batches[-1][-1][0]), within=60)
        assert feed.service.pid is not None
        os.kill(feed.service.pid, signal.SIGUSR1)

        def repeated_then_resolved(records: Records) -> bool:
            if len(records) < 2 * len(ids):
                return False
            counts = Counter(_ids(records))
            return all(counts[i] >= 2 for i in ids) and _resolved_after(records, batches[-1][-1][0])

        records = _decoded(feed.read(repeated_then_resolved, within=60))
    finally:
        feed.stop()
    full = _publish(Fanout(50, 50, dedupe_window=100), records)
    assert sorted(full.values(), key=str) == sorted(ids, key=str)
    assert len(full) == len(ids), "a repeat was published again"
    late = Fanout(50, 50, low=0, high=len(records) // 2, dedupe_window=100)
    from_middle = _publish(late, records[late.start_offset :])
    exact = late.floor
    assert exact < len(records)
    assert {o: i for o, i in from_middle.items() if o >= exact} == {
        o: i for o, i in full.items() if o >= exact
    }


def _publish(
    fanout: Fanout, records: list[tuple[int, Row | Delete | Resolved | Gap]]
) -> dict[int, uuid.UUID]:
    """Offsets and message ids the fanout published (repeats dropped)."""
    published: dict[int, uuid.UUID] = {}
    for offset, event in records:
        if isinstance(event, Resolved):
            fanout.resolve(offset, event.hlc)
        elif isinstance(event, Row) and fanout.publish(offset, event):
            published[offset] = event.message.id
    return published


def test_history_snapshot_time_is_exact(root: Path, postgres: Postgres, kafka: KafkaBroker) -> None:
    """Under concurrent commits, the history read sees exactly the rows with `updated` <= T."""
    feed = Feed(root, postgres, kafka)
    feed.start()
    try:
        _check_history_snapshots(feed)
    finally:
        feed.stop()


def _check_history_snapshots(feed: Feed) -> None:

    async def run() -> list[tuple[set[uuid.UUID], int]]:
        reads: list[tuple[set[uuid.UUID], int]] = []
        async with AsyncConnectionPool(feed.url, kwargs={"autocommit": True}, open=False) as pool:
            store = MessageStore(pool)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_concurrent_writers, feed.url, 4, 40)
                for _ in range(20):
                    messages, snapshot = await store.history(1000)
                    reads.append(({m.id for m in messages}, hlc_value(snapshot)))
                    await anyio.sleep(0.02)
        return reads

    reads = anyio.run(run)
    latest = max(reads, key=lambda read: read[1])
    records = _decoded(feed.read(lambda rs: _resolved_above(rs, latest[1]), within=60))
    updated = {
        event.message.id: hlc_value(event.updated or "")
        for _, event in records
        if isinstance(event, Row)
    }
    for seen, snapshot in reads:
        emitted = {i for i, u in updated.items() if u <= snapshot}
        assert emitted <= seen, "a row committed at or before T was not in the history"
        assert all(updated[i] <= snapshot for i in seen if i in updated), "a row after T was seen"


def _resolved_above(records: Records, value: int) -> bool:
    return any(
        isinstance(event, Resolved) and hlc_value(event.hlc) >= value
        for _, event in _decoded(records)
    )


@pytest.mark.slow
def test_waits_for_kafka_and_stops_during_an_outage(
    root: Path, postgres: Postgres, kafka: KafkaBroker
) -> None:
    """Started while Kafka is down, the stand-in stops at once on SIGTERM, and delivers
    every row committed meanwhile once the broker is back."""
    feed = Feed(root, postgres, kafka)
    kafka.stop()
    try:
        feed.start()  # the trigger needs only the database
        wait_until(
            lambda: "kafka not reachable" in feed.service.log_tail(),
            60,
            "the stand-in to wait for Kafka",
        )
        assert feed.service.terminate(10.0) == 0, feed.service.log_tail()
        feed.start()
        rows = [_message(60 + n) for n in range(5)]
        _insert(feed.url, rows)
    finally:
        kafka.start()
    try:
        feed.read(_has_all({row[0] for row in rows}), within=120)
    finally:
        feed.stop()
