"""The `messages.dlq` record: a record the writer could not store, bounded whatever it was."""

from __future__ import annotations

import base64
import hashlib
from typing import Literal

import msgspec

DEAD_LETTER_HEAD_BYTES = 1024
"""How much of a dead record's value a dead letter keeps (its length and hash say the rest)."""
DEAD_LETTER_KEY_BYTES = 256
DEAD_LETTER_REASON_CHARS = 500


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A `messages.dlq` record: a record the writer could not store, where it was, and why.

    Note: bounded whatever the record was (a few KiB of JSON at most): `value_head`
    and `key_head` are the first bytes of the original value and key in base64, so
    any bytes survive exactly; `value_size` and `value_sha256` describe the whole.
    """

    topic: str
    partition: int
    offset: int
    stage: Literal["decode", "insert"]
    """`decode`: not a message (bytes, shape, size); `insert`: the database refused it."""
    reason: str
    key_head: str | None
    key_size: int
    value_head: str
    value_size: int
    value_sha256: str


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    stage: Literal["decode", "insert"],
    reason: str,
) -> DeadLetter:
    """The bounded dead letter of one record."""
    value = value or b""
    if len(reason) > DEAD_LETTER_REASON_CHARS:
        reason = reason[: DEAD_LETTER_REASON_CHARS - 1] + "…"
    return DeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        stage=stage,
        reason=reason,
        key_head=None if key is None else _b64(key[:DEAD_LETTER_KEY_BYTES]),
        key_size=0 if key is None else len(key),
        value_head=_b64(value[:DEAD_LETTER_HEAD_BYTES]),
        value_size=len(value),
        value_sha256=hashlib.sha256(value).hexdigest(),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
