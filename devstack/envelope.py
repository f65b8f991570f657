"""CockroachDB's changefeed records, byte for byte: JSON format, wrapped envelope.

https://www.cockroachlabs.com/docs/stable/changefeed-messages
https://www.cockroachlabs.com/docs/stable/changefeed-sinks (resolved: null key, every partition)
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339nano(value: datetime) -> str:
    """A TIMESTAMPTZ as CockroachDB's changefeed JSON renders it (Go RFC3339Nano, UTC).

    Note: CockroachDB's tree.AsJSON formats TIMESTAMPTZ with time.RFC3339Nano, which
    drops trailing zeros of the fraction (and the dot when it is zero) and writes Z.
    """
    value = value.astimezone(UTC)
    fraction = f"{value.microsecond:06d}".rstrip("0")
    return value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def hlc(value: datetime, *, strict: bool = False) -> str:
    """An HLC timestamp string: wall-clock nanoseconds, a dot, a 10-digit logical counter.

    Note: the stand-in's commit clock counts microseconds. Kind (the default): the wall is
    those microseconds in nanoseconds, the counter 0. Strict, as CockroachDB's: the wall
    is 500 to 999 ns below them and the counter 1 to 7, both derived from the stamp (one
    transaction, one HLC); every order against other stamps and the history's snapshot
    time (`micros * 1000`, logical 0) stays what it was.
    https://www.cockroachlabs.com/docs/v25.4/changefeed-messages#responses
    """
    micros = (value - _EPOCH) // timedelta(microseconds=1)
    if not strict:
        return f"{micros * 1000}.0000000000"
    return f"{micros * 1000 - 500 - micros * 7919 % 500}.{1 + micros % 7:010d}"


def resolved_hlc(value: datetime, *, strict: bool = False) -> str:
    """A resolved record's HLC for the commit clock's `value`: every row stamped at or
    before it is at or below it, every later one above (strict: 1 to 499 ns below the
    microsecond, above every strict row of it, with a counter of 1 to 3)."""
    micros = (value - _EPOCH) // timedelta(microseconds=1)
    if not strict:
        return f"{micros * 1000}.0000000000"
    return f"{micros * 1000 - 1 - micros % 499}.{1 + micros % 3:010d}"


def record_key(message_id: uuid.UUID) -> bytes:
    """The changefeed key: the primary key columns as a JSON array."""
    return json.dumps([str(message_id)]).encode()


def row_value(
    message_id: uuid.UUID,
    author: str,
    text: str,
    created_at: datetime,
    updated: datetime,
    *,
    strict: bool = False,
) -> bytes:
    """The wrapped envelope of an insert or update (`strict`: CockroachDB's HLCs, `hlc`)."""
    after = {
        "author": author,
        "created_at": rfc3339nano(created_at),
        "id": str(message_id),
        "text": text,
    }
    value = {"after": after, "updated": hlc(updated, strict=strict)}
    return json.dumps(value, sort_keys=True).encode()


def delete_value(updated: datetime, *, strict: bool = False) -> bytes:
    """The wrapped envelope of a delete."""
    return json.dumps({"after": None, "updated": hlc(updated, strict=strict)}).encode()


def resolved_value(resolved: datetime, *, strict: bool = False) -> bytes:
    """A resolved record's value."""
    return json.dumps({"resolved": resolved_hlc(resolved, strict=strict)}).encode()
