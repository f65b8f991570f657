"""Helpers the integration and end-to-end tests share: bounded waits and direct reads."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from local_stack import Stack

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], within: float, what: str
) -> T:
    """Poll `probe` until `done(result)`; after `within` seconds fail naming `what`."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last: {result!r}")
        await anyio.sleep(0.1)


def database_url(stack: Stack) -> str:
    return stack.postgres.url("feedsvc")


async def stored_ids(stack: Stack, author: str) -> list[str]:
    """Ids of the stored messages of one author, with repeats if any."""
    async with await psycopg.AsyncConnection.connect(database_url(stack)) as conn:
        cur = await conn.execute("SELECT id::text FROM messages WHERE author = %s", (author,))
        return [row[0] for row in await cur.fetchall()]


async def end_offsets(stack: Stack, topic: str) -> dict[int, int]:
    """The end offset of each partition of a topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka.bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer.topics()
    return consumer.partitions_for_topic(topic) or set()


def log_of(stack: Stack, role: str) -> Path:
    return stack.root / "logs" / f"{role}.log"
