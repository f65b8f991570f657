"""Request ids end to end: the answer, the access log line, the error body, the Kafka record."""

from __future__ import annotations

import json

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from devstack import Stack
from feedsvc.config import Settings
from feedsvc.kafka import REQUEST_ID_HEADER, SUBMITTED
from tests.support import log_of, wait_for

SUBMITTED_PARTITIONS = Settings().submitted_partitions
"""The stack's: it sets no FEED_SUBMITTED_PARTITIONS."""


async def test_a_posts_request_id_reaches_its_kafka_record(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """The X-Request-ID of a 202 comes back and travels in the record's `request-id` header."""
    rid = f"e2e-{author}"
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(SUBMITTED, p) for p in range(SUBMITTED_PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # the end, fixed before the post
        answer = await client.post(
            "/messages", json={"author": author, "text": "traced"}, headers={"X-Request-ID": rid}
        )
        assert answer.status_code == 202 and answer.headers["x-request-id"] == rid
        message_id = answer.json()["id"].encode()

        async def read() -> list[tuple[str, bytes]] | None:
            batch = await consumer.getmany(timeout_ms=500)
            for record in (r for records in batch.values() for r in records):
                if message_id in (record.value or b""):
                    return list(record.headers)
            return None

        headers = await wait_for(read, lambda got: got is not None, 30, "the record")
    finally:
        await consumer.stop()
    assert (REQUEST_ID_HEADER, rid.encode()) in (headers or [])


async def test_the_access_log_line_joins_the_request_id_and_the_message_id(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """The api's access log line of a post names both its request id and its message id."""
    rid = f"log-{author}"
    answer = await client.post(
        "/messages", json={"author": author, "text": "logged"}, headers={"X-Request-ID": rid}
    )
    assert answer.status_code == 202

    async def line() -> dict[str, object] | None:
        for text in log_of(stack, "api").read_text().splitlines():
            if rid in text:
                return dict(json.loads(text))
        return None

    logged = await wait_for(line, lambda got: got is not None, 10, "the access log line")
    assert logged is not None and logged["message_id"] == answer.json()["id"]


async def test_an_error_body_names_the_request_id(client: httpx.AsyncClient) -> None:
    """A 400 from the door carries the request id in its header and in its JSON body."""
    answer = await client.post(
        "/messages", content=b"{", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json()["request_id"] == answer.headers["x-request-id"]
