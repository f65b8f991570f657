"""The writer's decode step: dead letters for what cannot be read, one row per id."""

from __future__ import annotations

from typing import NamedTuple

from feedsvc.ingest.writer import decode_batch
from feedsvc.messages import Submission, encode, new_message


class Record(NamedTuple):
    """The fields of an aiokafka ConsumerRecord the writer reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def record(offset: int, value: bytes | None, key: bytes | None = b"ada") -> Record:
    return Record("messages.submitted", 0, offset, key, value)


def test_good_records_become_messages_in_order() -> None:
    """Valid records decode to their messages, in record order."""
    first = new_message(Submission(author="ada", text="one"))
    second = new_message(Submission(author="ada", text="two"))
    messages, dead = decode_batch([record(0, encode(first)), record(1, encode(second))])
    assert (messages, dead) == ([first, second], [])


def test_repeated_id_is_stored_once() -> None:
    """A retried Idempotency-Key puts one id twice in a batch; the first one is kept."""
    sub = Submission(author="ada", text="hi")
    once, again = new_message(sub, "key"), new_message(sub, "key")
    messages, _ = decode_batch([record(0, encode(once)), record(1, encode(again))])
    assert messages == [once]


def test_undecodable_records_become_dead_letters_with_reasons() -> None:
    """Garbage, wrong shapes and empty values go to the DLQ with where they came from."""
    good = new_message(Submission(author="ada", text="fine"))
    batch = [
        record(0, b"{not json"),
        record(1, b'{"id": "nope"}', key=None),
        record(2, None),
        record(3, encode(good)),
    ]
    messages, dead = decode_batch(batch)
    assert messages == [good]
    assert [d.offset for d in dead] == [0, 1, 2]
    assert all(d.reason and d.topic == "messages.submitted" for d in dead)
    assert dead[0].value == "{not json" and dead[1].key is None
