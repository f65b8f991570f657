"""A poison record never holds back a good one: real writer, Kafka and database.

Guarantee: ARCHITECTURE.md#bad-records.

Each poison is produced straight into `messages.submitted` with its author's key, as
anything with access to the topic could, and real posts of that author follow it on
the same partition. They must all be stored once, the poison must be in
`messages.dlq` with a bounded payload, and the writer must not have restarted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devstack import Stack
from feedsvc.kafka import DLQ, SUBMITTED
from feedsvc.messages import DeadLetter
from tests.support import log_of, post_many, stored_ids, wait_for

pytestmark = pytest.mark.stack

# The largest a dead letter may be, whatever the poison (DeadLetter's bound, with room).
MAX_LETTER_BYTES = 8 * 1024


def _message_json(text: str, author: str) -> bytes:
    """A record shaped exactly as the api produces it, with any text."""
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "author": author,
            "text": text,
            "created_at": datetime.now(UTC).isoformat(),
        }
    ).encode()


POISONS: dict[str, Callable[[str], bytes]] = {
    "undecodable bytes": lambda author: b"\xff\xfe\x00not json at all\x80",
    # 200 KB of control bytes: JSON-escaped as text it would be ~1.2 MB, over Kafka's limit.
    "200 KB of control bytes": lambda author: bytes(range(32)) * 6400,
    "valid JSON of the wrong shape": lambda author: json.dumps(
        {"id": "not-a-uuid", "author": author, "text": 5}
    ).encode(),
    "a message too large": lambda author: _message_json("x" * 100_000, author),
    "a row the database refuses": lambda author: _message_json("NUL \x00 inside", author),
}


@pytest.mark.parametrize("kind", list(POISONS))
async def test_poison_is_dead_lettered_and_the_posts_behind_it_stored(
    kind: str, stack: Stack, client: httpx.AsyncClient, author: str
) -> None:
    """The posts after a poison of the same key are stored once; the poison is in the DLQ."""
    writer_pid = stack.service("writer").pid
    log_start = log_of(stack, "writer").stat().st_size
    poison = POISONS[kind](author)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(SUBMITTED, poison, key=author.encode())
    finally:
        await producer.stop()

    accepted = await post_many(client, author, 20)

    async def stored() -> list[str]:
        return await stored_ids(stack, author)

    ids = await wait_for(stored, lambda ids: set(ids) >= set(accepted), 60, "the posts stored")
    assert sorted(ids) == sorted(accepted), "stored twice, or the poison was stored"

    letter, size = await _dead_letter_of(stack, sent.partition, sent.offset)
    assert size <= MAX_LETTER_BYTES
    assert letter.key_head == base64.b64encode(author.encode()).decode()
    assert letter.value_size == len(poison)
    assert letter.value_sha256 == hashlib.sha256(poison).hexdigest()
    assert base64.b64decode(letter.value_head) == poison[:1024]
    assert letter.reason
    assert letter.stage == ("insert" if kind == "a row the database refuses" else "decode")

    assert stack.service("writer").pid == writer_pid, "the writer restarted"

    async def logged() -> int:
        lines = [e for e in _log_entries(stack, log_start) if e.get("msg") == "dead letter"]
        return [(e["partition"], e["offset"]) for e in lines].count((sent.partition, sent.offset))

    assert await wait_for(logged, bool, 10, "the dead letter's log line") == 1


async def _dead_letter_of(stack: Stack, partition: int, offset: int) -> tuple[DeadLetter, int]:
    """The DLQ letter of one record of messages.submitted, and its size in bytes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    tp = TopicPartition(DLQ, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    found: list[tuple[DeadLetter, int]] = []

    async def read() -> list[tuple[DeadLetter, int]]:
        for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
            letter = msgspec.json.decode(record.value, type=DeadLetter)
            if (letter.topic, letter.partition, letter.offset) == (SUBMITTED, partition, offset):
                found.append((letter, len(record.value)))
        return found

    try:
        await wait_for(read, bool, 60, f"the dead letter of {partition}:{offset}")
    finally:
        await consumer.stop()
    assert len(found) == 1, f"{len(found)} dead letters for one record"
    return found[0]


def _log_entries(stack: Stack, start: int) -> list[dict[str, object]]:
    with log_of(stack, "writer").open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
