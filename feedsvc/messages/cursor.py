"""The `before` cursor of `GET /messages`: a keyset position, sent as a readable token."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import msgspec

CURSOR_PATTERN = r"\A[0-9]{1,17}_[0-9a-f]{32}\Z"
"""Every `before` token, and only those: `<created_at in µs since 1970>_<id in hex>`.

Note: the OpenAPI spec publishes this pattern, so every string that matches it must be a
position the api accepts (schemathesis sends such strings); that is why the token is a
plain, total form rather than an opaque encoding with strings that match but do not decode.
17 digits stay below year 5000, inside Python's and the databases' timestamp ranges.
"""

_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Cursor(msgspec.Struct, frozen=True):
    """A position in the newest-first walk: the last (created_at, id) already seen."""

    created_at: datetime
    id: uuid.UUID


def encode_cursor(cursor: Cursor) -> str:
    """The `before` token of a position: `<created_at in µs since 1970>_<id in hex>`."""
    return f"{(cursor.created_at - _EPOCH) // _MICROSECOND}_{cursor.id.hex}"


def decode_cursor(token: str) -> Cursor:
    """The position a `before` token names; raises ValueError if it is not one.

    Note: every token of the documented form is a position, so a client may also make
    one: `0_<32 zeros>` is before everything, an empty page.
    """
    if not _CURSOR.match(token):
        raise ValueError(
            "before must be a cursor: the `next` of a page (<microseconds>_<32 hex digits>)"
        )
    micros, _, hex_id = token.partition("_")
    return Cursor(created_at=_EPOCH + int(micros) * _MICROSECOND, id=uuid.UUID(hex=hex_id))
