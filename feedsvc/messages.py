"""Every wire shape of feedsvc, and the rules a submitted message must follow.

Note: shapes are decoded at the boundary (HTTP body, Kafka record, database
row) and only these structs travel inward.
"""

from __future__ import annotations

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


class DeadLetter(msgspec.Struct, frozen=True):
    """A `messages.dlq` record: a submitted record the writer could not decode, and why."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: str
    reason: str
