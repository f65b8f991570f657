"""Every wire shape of feedsvc, and the rules a submitted message must follow.

Note: shapes are decoded at the boundary (HTTP body, Kafka record, database
row) and only these structs travel inward.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

AUTHOR_PATTERN = "^[A-Za-z0-9_]{1,32}$"
MAX_TEXT_CHARS = 280
MAX_BODY_BYTES = 4096

# Every C0/C1 control character and DEL except the newline.
_FORBIDDEN_CHARS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
# Idempotency keys are namespaced per author, so two authors never collide.
_IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0d6a2e-6f0e-4c57-9a43-2f4f7d3c8e11")


class Submission(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of `POST /messages`."""

    author: Annotated[str, msgspec.Meta(pattern=AUTHOR_PATTERN)]
    text: str


class Message(msgspec.Struct, frozen=True):
    """A message as accepted, stored and streamed."""

    id: uuid.UUID
    author: str
    text: str
    created_at: datetime


class Accepted(msgspec.Struct, frozen=True):
    """The 202 body of `POST /messages`."""

    id: uuid.UUID
    author: str
    text: str
    created_at: datetime
    status: Literal["accepted"] = "accepted"


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """Every error body: what went wrong and, where one field is to blame, which."""

    error: str
    detail: str
    field: str | None = None


class MessagePage(msgspec.Struct, frozen=True):
    """The body of `GET /messages`: newest first, `next` is an opaque cursor."""

    items: list[Message]
    next: str | None


class InvalidSubmission(ValueError):
    """A submission that breaks a rule; `field` names the culprit when there is one."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


_submission_decoder = msgspec.json.Decoder(Submission)
_message_decoder = msgspec.json.Decoder(Message)
_encoder = msgspec.json.Encoder()
_FIELD_IN_PATH = re.compile(r"at `\$\.(\w+)`")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")
_MISSING_FIELD = re.compile(r"missing required field `([^`]*)`")


def decode_submission(body: bytes) -> Submission:
    """Decode and validate a `POST /messages` body; the text comes back trimmed.

    Raises `InvalidSubmission` naming the field at fault.
    """
    try:
        raw = _submission_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidSubmission(_describe(str(exc)), _field_of(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise InvalidSubmission(f"body is not valid JSON: {exc}") from None
    text = raw.text.strip()
    if not text:
        raise InvalidSubmission("text must not be empty", "text")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidSubmission(
            f"text is {len(text)} characters long, the limit is {MAX_TEXT_CHARS}", "text"
        )
    if _FORBIDDEN_CHARS.search(text):
        raise InvalidSubmission(
            "text must not contain control characters (newline is allowed)", "text"
        )
    return Submission(author=raw.author, text=text)


def _field_of(error: str) -> str | None:
    for pattern in (_FIELD_IN_PATH, _UNKNOWN_FIELD, _MISSING_FIELD):
        if match := pattern.search(error):
            return match.group(1)
    return None


def _describe(error: str) -> str:
    if "at `$.author`" in error and "match pattern" in error:
        return "author must be 1-32 characters of A-Z, a-z, 0-9 and _"
    if error.startswith("Expected `object`"):
        return "body must be a JSON object with the fields author and text"
    return error


def new_message(submission: Submission, idempotency_key: str | None = None) -> Message:
    """Give a submission its id and creation time.

    Note: with an idempotency key the id is derived from (author, key), so a retry
    gets the same id and the insert-if-absent in the database stores it once.
    """
    if idempotency_key is None:
        message_id = uuid.uuid4()
    else:
        message_id = uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{submission.author}\n{idempotency_key}")
    return Message(
        id=message_id,
        author=submission.author,
        text=submission.text,
        created_at=datetime.now(UTC),
    )


def encode(value: msgspec.Struct) -> bytes:
    """JSON bytes of any wire shape."""
    return _encoder.encode(value)


def decode_message(data: bytes) -> Message:
    """A message from its JSON bytes (a `messages.submitted` record); raises on bad input."""
    return _message_decoder.decode(data)


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
