"""Decoding a fetched batch: dead letters for what is not a message, one row per id."""

from __future__ import annotations

import base64

from feedsvc.ingest.batch import MAX_RECORD_BYTES, decode_batch
from feedsvc.messages import Submission, encode, new_message
from tests.unit.ingest.fakes import TOPIC, message, record


def test_good_records_become_messages_in_order() -> None:
    """Valid records decode to their messages, in record order."""
    first, second = message("one"), message("two")
    batch = decode_batch([record(0, encode(first)), record(1, encode(second))])
    assert (batch.messages, batch.dead) == ([first, second], [])


def test_repeated_id_is_inserted_once() -> None:
    """A retried Idempotency-Key puts one id twice in a batch; the first one is inserted."""
    sub = Submission(author="ada", text="hi")
    once, again = new_message(sub, "key"), new_message(sub, "key")
    batch = decode_batch([record(0, encode(once)), record(1, encode(again))])
    assert batch.messages == [once]
    assert [r.offset for r in batch.records[once.id]] == [0, 1]


def test_what_is_not_a_message_becomes_a_dead_letter() -> None:
    """Garbage, wrong shapes, empty and oversized values go to the DLQ with where they came from."""
    good = message("fine")
    huge = encode(message("x" * (MAX_RECORD_BYTES + 1)))
    batch = decode_batch(
        [
            record(0, b"{not json"),
            record(1, b'{"id": "nope"}', key=None),
            record(2, None),
            record(3, b'["a", "list"]'),
            record(4, huge),
            record(5, encode(good)),
        ]
    )
    assert batch.messages == [good]
    assert [d.offset for d in batch.dead] == [0, 1, 2, 3, 4]
    assert all(d.reason and d.topic == TOPIC and d.stage == "decode" for d in batch.dead)
    assert base64.b64decode(batch.dead[0].value_head) == b"{not json"
    assert batch.dead[1].key_head is None
    assert "bytes" in batch.dead[4].reason and batch.dead[4].value_size == len(huge)
