"""A fetched batch of `messages.submitted` records, decoded: messages to insert, dead letters."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import msgspec

from feedsvc.kafka import REQUEST_ID_HEADER
from feedsvc.messages import MAX_BODY_BYTES, DeadLetter, Message, dead_letter, decode_message

MAX_RECORD_BYTES = 2 * MAX_BODY_BYTES
"""No record the api produces comes near this: its message is a body of at most 4 KiB."""


class Record(Protocol):
    """The fields of a consumed Kafka record the writer reads (aiokafka's `ConsumerRecord`)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass
class Decoded:
    """A batch split into what to insert and what cannot be a message."""

    messages: list[Message] = field(default_factory=list)
    """The first message of each id, in record order."""
    records: dict[uuid.UUID, list[Record]] = field(default_factory=dict)
    """Every record of each id: a retried Idempotency-Key puts one id in several."""
    dead: list[DeadLetter] = field(default_factory=list)


def decode_batch(records: Sequence[Record]) -> Decoded:
    """Split fetched records into messages (first of each id) and dead letters."""
    batch = Decoded()
    for record in records:
        value = record.value or b""
        try:
            if len(value) > MAX_RECORD_BYTES:
                raise ValueError(
                    f"record is {len(value)} bytes; a submitted message is at most "
                    f"{MAX_RECORD_BYTES}"
                )
            message = decode_message(value)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            batch.dead.append(letter(record, "decode", str(exc)))
            continue
        same_id = batch.records.setdefault(message.id, [])
        if not same_id:
            batch.messages.append(message)
        same_id.append(record)
    return batch


def request_id_of(record: Record) -> str | None:
    """The `X-Request-ID` of the post a record came from, if the api sent one."""
    # aiokafka's ConsumerRecord.headers: a sequence of (name, bytes); Record leaves it out
    # so that a record without headers (a test's) is one too.
    for name, value in getattr(record, "headers", None) or ():
        if name == REQUEST_ID_HEADER:
            return bytes(value).decode("utf-8", "replace")
    return None


def letter(record: Record, stage: Literal["decode", "insert"], reason: str) -> DeadLetter:
    """The bounded dead letter of one record."""
    return dead_letter(
        record.topic, record.partition, record.offset, record.key, record.value, stage, reason
    )
