"""Helpers the integration and end-to-end tests share: the backend, bounded waits, direct reads."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devstack import Service, Stack, free_port
from devstack.poll import wait_for as wait_for  # the tests' bounded wait, re-exported

BACKENDS = ("native", "cockroach")
BACKEND = os.environ.get("FEEDSVC_TEST_BACKEND") or "native"
"""What the tests run against (FEEDSVC_TEST_BACKEND): `native`, the default, is
PostgreSQL, a Kafka broker and the changefeed stand-in that the tests start themselves;
`cockroach` is the compose services of `scripts/test-in-docker` (the real CockroachDB
cluster, Kafka and changefeed), at the FEEDSVC_TEST_* addresses."""
if BACKEND not in BACKENDS:
    raise RuntimeError(f"FEEDSVC_TEST_BACKEND={BACKEND!r}: expected one of {', '.join(BACKENDS)}")
COCKROACH = BACKEND == "cockroach"

native_only = pytest.mark.skipif(
    COCKROACH,
    reason="native only: stops, freezes or rebuilds the database, Kafka or the changefeed "
    "stand-in, or runs PostgreSQL-only SQL; the cockroach backend's are shared compose services",
)
"""Marks a test (or, as `pytestmark`, a module) that needs the native stack's powers."""


async def stored_ids(stack: Stack, author: str) -> list[str]:
    """Ids of the stored messages of one author, with repeats if any."""
    # Plain SQL that CockroachDB and PostgreSQL both run (UUID to text cast included).
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        cur = await conn.execute("SELECT id::text FROM messages WHERE author = %s", (author,))
        return [row[0] for row in await cur.fetchall()]


async def end_offsets(stack: Stack, topic: str) -> dict[int, int]:
    """The end offset of each partition of a topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
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


class SseEvent(msgspec.Struct, frozen=True):
    """One dispatched Server-Sent Event (comments are kept as event `comment`)."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """Parses an SSE byte stream per the WHATWG rules we rely on (id, event, data, comments).

    Note: the id persists across events, as in a browser, so `last_id` is what an
    EventSource would send as Last-Event-ID on reconnect.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()
        self.last_id: str | None = None
        self._id_buffer: str | None = None
        self.retry_ms: int | None = None

    async def next(self, within: float = 10) -> SseEvent | None:
        """The next event or comment; None when the stream ended."""
        event, data = "message", list[str]()
        with anyio.fail_after(within):
            async for line in self._lines:
                if line == "":
                    # Dispatch: the id takes effect even for an event without data.
                    self.last_id = self._id_buffer
                    if data:
                        return SseEvent(event, "\n".join(data), self.last_id)
                    event = "message"
                    continue
                if line.startswith(":"):
                    return SseEvent("comment", line[1:].strip(), self.last_id)
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    self._id_buffer = value
                elif name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "retry":
                    self.retry_ms = int(value)
        return None

    async def messages(self, count: int, within: float = 20) -> list[SseEvent]:
        """The next `count` events that are not comments."""
        got: list[SseEvent] = []
        with anyio.fail_after(within):
            while len(got) < count:
                event = await self.next(within)
                if event is None:
                    raise AssertionError(f"stream ended after {len(got)} of {count} events")
                if event.event != "comment":
                    got.append(event)
        return got


async def post_many(
    client: httpx.AsyncClient, author: str, count: int, prefix: str = "m"
) -> list[str]:
    """Post `count` messages one after another; the ids in posting order."""
    ids = []
    for i in range(count):
        r = await client.post("/messages", json={"author": author, "text": f"{prefix} {i}"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


@contextmanager
def extra_api(stack: Stack, name: str = "api2", **env: str) -> Iterator[str]:
    """Another api process on the same stack (another replica), with `env` on top of the
    stack's settings; yields its URL and stops it on the way out."""
    port = free_port()
    api = Service(
        name,
        [sys.executable, "-m", "feedsvc", "api"],
        {**stack.env(), "FEED_PORT": str(port), **env},
        stack.root / "logs" / f"{name}-{port}.log",
    )
    api.start()
    try:
        url = f"http://127.0.0.1:{port}"
        api.wait_http_ok(f"{url}/health/ready", 60)
        yield url
    finally:
        api.terminate(15)
