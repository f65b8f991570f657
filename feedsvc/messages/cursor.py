"""The `before` cursor of `GET /messages`: a keyset position, sent as an opaque token."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

import msgspec


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    """A position in the newest-first walk: the last (created_at, id) already seen.

    Note: the token is the URL-safe base64 of `["<created_at>","<id>"]` without padding;
    tokens already handed out must keep working, so tests/unit/test_messages.py pins it.
    """

    created_at: datetime
    id: uuid.UUID


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Cursor)


def encode_cursor(cursor: Cursor) -> str:
    """An opaque, URL-safe token for `before`."""
    return base64.urlsafe_b64encode(_encoder.encode(cursor)).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """The position a `before` token names; raises ValueError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return _decoder.decode(raw)
    # binascii.Error, and the ValueError of a token with non-ASCII characters, are both
    # ValueErrors: whatever the client sent, it gets our message, not Python's.
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError("before is not a cursor this api issued") from exc
