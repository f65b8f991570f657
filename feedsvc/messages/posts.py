"""A message as it travels (HTTP, `messages.submitted`, the database, the feed) and the
HTTP bodies around it."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Literal

import msgspec

from feedsvc.messages.submission import Submission

# Idempotency keys are namespaced per author, so two authors never collide.
_IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0d6a2e-6f0e-4c57-9a43-2f4f7d3c8e11")


class Message(msgspec.Struct, frozen=True):
    """A message as accepted, stored and streamed."""

    id: uuid.UUID
    author: str
    text: str
    created_at: datetime


class KeyClaim(msgspec.Struct, frozen=True):
    """An Idempotency-Key's message id bound to its first text (a `key_claims` row)."""

    id: uuid.UUID
    digest: bytes
    """A digest of the text: enough to tell another text from it without keeping it twice."""
    created_at: datetime
    """The first request's: every retry under the key answers and sends it."""


class Accepted(Message, frozen=True):
    """The 202 body of `POST /messages`: the message, then `"status": "accepted"`.

    Note: a subclass adds its fields after the parent's, so the JSON keeps the order
    id, author, text, created_at, status (tests/unit/test_messages.py pins the bytes).
    """

    status: Literal["accepted"] = "accepted"


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """Every error body: what went wrong and, where one field is to blame, which."""

    error: str
    detail: str
    field: str | None = None
    request_id: str | None = None
    """The request's `X-Request-ID`, added on the way out (`feedsvc.http.requestid`)."""


class MessagePage(msgspec.Struct, frozen=True):
    """The body of `GET /messages`: newest first, `next` is an opaque cursor."""

    items: list[Message]
    next: str | None


_message_decoder = msgspec.json.Decoder(Message)
_encoder = msgspec.json.Encoder()


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


def text_digest(text: str) -> bytes:
    """The `KeyClaim.digest` of a text: BLAKE2b, 16 bytes."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def encode(value: msgspec.Struct) -> bytes:
    """JSON bytes of any wire shape."""
    return _encoder.encode(value)


def decode_message(data: bytes) -> Message:
    """A message from its JSON bytes (a `messages.submitted` record); raises on bad input."""
    return _message_decoder.decode(data)
