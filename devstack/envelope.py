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


def hlc(value: datetime) -> str:
    """An HLC timestamp string: wall-clock nanoseconds, a dot, a 10-digit logical counter."""
    micros = (value - _EPOCH) // timedelta(microseconds=1)
    return f"{micros * 1000}.0000000000"


def record_key(message_id: uuid.UUID) -> bytes:
    """The changefeed key: the primary key columns as a JSON array."""
    return json.dumps([str(message_id)]).encode()


def row_value(
    message_id: uuid.UUID, author: str, text: str, created_at: datetime, updated: datetime
) -> bytes:
    """The wrapped envelope of an insert or update."""
    after = {
        "author": author,
        "created_at": rfc3339nano(created_at),
        "id": str(message_id),
        "text": text,
    }
    return json.dumps({"after": after, "updated": hlc(updated)}, sort_keys=True).encode()


def delete_value(updated: datetime) -> bytes:
    """The wrapped envelope of a delete."""
    return json.dumps({"after": None, "updated": hlc(updated)}).encode()


def resolved_value(resolved: datetime) -> bytes:
    """A resolved record's value."""
    return json.dumps({"resolved": hlc(resolved)}).encode()
