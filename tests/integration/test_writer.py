"""The writer on a real broker and database: nothing skipped quietly, the offset committed last."""

from __future__ import annotations

import logging
import uuid

import anyio
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import RecordsToDelete

from devstack import KafkaBroker, Postgres
from feedsvc import schema
from feedsvc.config import load_settings
from feedsvc.ingest.deadletters import DEAD_LETTERS_TOTAL, DeadLetters
from feedsvc.ingest.writer import EXPIRED_TOTAL, OUT_OF_RANGE_TOTAL, Writer
from feedsvc.kafka import (
    DLQ,
    SUBMITTED,
    WRITER_GROUP,
    admin,
    ensure_topics,
    producer,
    writer_consumer,
)
from feedsvc.messages import Submission, encode, new_message
from feedsvc.metrics import Metrics
from feedsvc.store import MessageStore, open_pool
from tests.support import native_only, wait_for

pytestmark = [pytest.mark.stack, native_only]


async def test_records_expired_under_the_writer_are_counted_and_the_rest_stored(
    postgres: Postgres, kafka: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Committed at 2, retention kept from 6: an error says 4 were lost; 6.. are stored."""
    url = postgres.url("t_" + uuid.uuid4().hex[:12])
    schema.ensure_database(url)
    with psycopg.connect(url, autocommit=True) as conn:
        schema.ensure_schema(conn)
    settings = load_settings(
        {
            "FEED_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "FEED_DATABASE_URL": url,
            "FEED_SUBMITTED_PARTITIONS": "1",
        }
    )
    tp = TopicPartition(SUBMITTED, 0)
    author = "x_" + uuid.uuid4().hex[:12]
    messages = [new_message(Submission(author=author, text=f"m {i}")) for i in range(10)]
    async with admin(settings) as client:
        await ensure_topics(client, settings)
        async with producer(settings) as send:
            offsets = [
                (await send.send_and_wait(SUBMITTED, encode(m), key=author.encode())).offset
                for m in messages
            ]
        # The writer group stored the first two; retention then deleted up to the 7th.
        await _commit(kafka.bootstrap, tp, offsets[2])
        await client.delete_records({tp: RecordsToDelete(offsets[6])})

    metrics = Metrics()
    stopping = anyio.Event()
    with caplog.at_level(logging.ERROR, logger="feedsvc.ingest.writer"):
        async with (
            open_pool(settings, "test") as pool,
            producer(settings) as dlq,
            writer_consumer(settings) as consumer,
            anyio.create_task_group() as tasks,
        ):
            store = MessageStore(pool)
            writer = Writer(
                consumer,
                store,
                DeadLetters(dlq, 5.0, metrics),
                metrics,
                batch=500,
                linger_ms=50,
                kafka_timeout_s=5.0,
            )
            tasks.start_soon(writer.run, stopping)
            await wait_for(lambda: _stored(url, author), lambda n: n >= 4, 60, "4 stored")
            stopping.set()
    assert await _stored(url, author) == 4
    assert (metrics.registry.get_sample_value(OUT_OF_RANGE_TOTAL) or 0) == 1
    assert (metrics.registry.get_sample_value(EXPIRED_TOTAL) or 0) == 4
    [error] = [r for r in caplog.records if r.name == "feedsvc.ingest.writer"]
    assert error.getMessage() == "records expired before the writer stored them"
    assert (error.committed, error.earliest, error.lost) == (offsets[2], offsets[6], 4)  # type: ignore[attr-defined]


async def _commit(bootstrap: str, tp: TopicPartition, offset: int) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=WRITER_GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def _stored(url: str, author: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT count(*) FROM messages WHERE author = %s", (author,))
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_an_unavailable_dlq_holds_the_commit_back_until_the_letter_is_in(
    postgres: Postgres, kafka: KafkaBroker
) -> None:
    """messages.dlq missing: the good row is stored, nothing committed; back: letter, commit."""
    url = postgres.url("t_" + uuid.uuid4().hex[:12])
    schema.ensure_database(url)
    with psycopg.connect(url, autocommit=True) as conn:
        schema.ensure_schema(conn)
    settings = load_settings(
        {
            "FEED_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "FEED_DATABASE_URL": url,
            "FEED_SUBMITTED_PARTITIONS": "1",
            "FEED_KAFKA_TIMEOUT_S": "1",
        }
    )
    tp = TopicPartition(SUBMITTED, 0)
    author = "x_" + uuid.uuid4().hex[:12]
    good = new_message(Submission(author=author, text="behind the poison"))
    async with admin(settings) as client:
        await ensure_topics(client, settings)
        await client.delete_topics([DLQ])

        async def dlq_exists() -> bool:
            return DLQ in await client.list_topics()

        await wait_for(dlq_exists, lambda there: not there, 30, "messages.dlq deleted")
        async with producer(settings) as send:
            poison = await send.send_and_wait(SUBMITTED, b"\x00poison", key=author.encode())
            await send.send_and_wait(SUBMITTED, encode(good), key=author.encode())
        # Whatever earlier tests left: the writer group starts right at the poison.
        await _commit(kafka.bootstrap, tp, poison.offset)

        stopping = anyio.Event()
        async with (
            open_pool(settings, "test") as pool,
            producer(settings) as dlq,
            writer_consumer(settings) as consumer,
            anyio.create_task_group() as tasks,
        ):
            metrics = Metrics()
            writer = Writer(
                consumer,
                MessageStore(pool),
                DeadLetters(dlq, 1.0, metrics),
                metrics,
                batch=500,
                linger_ms=50,
                kafka_timeout_s=1.0,
            )
            tasks.start_soon(writer.run, stopping)
            await wait_for(lambda: _stored(url, author), lambda n: n == 1, 60, "the good row")
            await anyio.sleep(3)  # several DLQ send attempts fail meanwhile
            assert await _committed(kafka.bootstrap, tp) == poison.offset
            assert (
                metrics.registry.get_sample_value(DEAD_LETTERS_TOTAL, {"stage": "decode"}) or 0
            ) == 0

            await ensure_topics(client, settings)  # messages.dlq is back
            await wait_for(
                lambda: _committed(kafka.bootstrap, tp),
                lambda offset: offset == poison.offset + 2,
                60,
                "the batch committed",
            )
            stopping.set()
    assert (metrics.registry.get_sample_value(DEAD_LETTERS_TOTAL, {"stage": "decode"}) or 0) == 1
    assert await _stored(url, author) == 1


async def _committed(bootstrap: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=WRITER_GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        committed: int | None = await consumer.committed(tp)
        return committed
    finally:
        await consumer.stop()
