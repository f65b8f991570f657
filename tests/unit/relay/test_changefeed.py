"""Decoding CockroachDB changefeed records (JSON, wrapped envelope, WITH updated, resolved)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from feedsvc.relay.changefeed import (
    ChangefeedDecodeError,
    Delete,
    Resolved,
    Row,
    decode_record,
    parse_timestamp,
)

ID = uuid.UUID("0b7f9e3c-4a57-4d8e-9a6b-1c2d3e4f5a6b")
KEY = f'["{ID}"]'.encode()
HLC = "1700000000000000000.0000000001"


def _row(created_at: str) -> bytes:
    return (
        f'{{"after": {{"author": "ann", "created_at": "{created_at}", "id": "{ID}", '
        f'"text": "hi\\nthere"}}, "updated": "{HLC}"}}'
    ).encode()


def test_row_becomes_a_message() -> None:
    """A row record decodes into its message and commit HLC."""
    record = decode_record(KEY, _row("2024-01-01T00:00:00.123456Z"))
    assert isinstance(record, Row)
    assert record.updated == HLC
    assert record.message.id == ID
    assert record.message.author == "ann"
    assert record.message.text == "hi\nthere"
    assert record.message.created_at == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    "rendered",
    [
        "2024-01-01T00:00:00.123456Z",  # CockroachDB: Go RFC3339Nano in UTC
        "2024-01-01T00:00:00.123456+00:00",
        "2024-01-01 00:00:00.123456+00:00",  # SQL text rendering
        "2024-01-01 00:00:00.123456+00",  # PostgreSQL text output
        "2024-01-01T01:00:00.123456+01:00",  # another zone, same instant
        "2024-01-01T00:00:00.123456000Z",  # nanosecond digits
        "2024-01-01T00:00:00.123456",  # TIMESTAMP: zone-less, UTC
    ],
)
def test_timestamp_renderings_decode_to_the_same_instant(rendered: str) -> None:
    """Every rendering of a TIMESTAMPTZ decodes to one aware UTC datetime."""
    value = parse_timestamp(rendered)
    assert value == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert value.tzinfo is UTC


def test_whole_second_timestamp_without_fraction() -> None:
    """RFC3339Nano drops an all-zero fraction; that decodes too."""
    assert parse_timestamp("2024-01-01T00:00:00Z") == datetime(2024, 1, 1, tzinfo=UTC)


def test_delete_takes_its_id_from_the_key() -> None:
    """`after: null` is a delete of the message named by the key."""
    record = decode_record(KEY, f'{{"after": null, "updated": "{HLC}"}}'.encode())
    assert record == Delete(id=ID, updated=HLC)


def test_resolved_has_a_null_key() -> None:
    """A resolved record decodes to its HLC."""
    assert decode_record(None, f'{{"resolved": "{HLC}"}}'.encode()) == Resolved(hlc=HLC)


def test_row_without_updated_is_accepted() -> None:
    """A changefeed created without `updated` still decodes (updated is None)."""
    value = _row("2024-01-01T00:00:00Z").replace(f', "updated": "{HLC}"'.encode(), b"")
    record = decode_record(KEY, value)
    assert isinstance(record, Row)
    assert record.updated is None


def test_unknown_columns_are_ignored() -> None:
    """A column added to the table later does not stop the feed."""
    value = (
        f'{{"after": {{"id": "{ID}", "author": "a", "text": "t", "likes": 3, '
        f'"created_at": "2024-01-01T00:00:00Z"}}, "updated": "{HLC}"}}'
    ).encode()
    assert isinstance(decode_record(KEY, value), Row)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (KEY, b"not json", "not a changefeed envelope"),
        (KEY, None, "no value"),
        (KEY, b"[1, 2]", "not a changefeed envelope"),
        (KEY, b"{}", "neither"),
        (KEY, b'{"after": null, "updated": "yesterday"}', "not an HLC"),
        (None, b'{"resolved": "12"}', "not an HLC"),
        (None, f'{{"after": null, "updated": "{HLC}"}}'.encode(), "needs the key"),
        (b'["not-a-uuid"]', f'{{"after": null, "updated": "{HLC}"}}'.encode(), "key is not"),
        (b"[1]", _row("2024-01-01T00:00:00Z"), "key is not"),
        (f'["{uuid.uuid4()}"]'.encode(), _row("2024-01-01T00:00:00Z"), "does not match"),
        (KEY, _row("the first of January"), "not an ISO 8601"),
        (KEY, _row("2024-01-01T00:00:00Z").replace(b'"ann"', b"7"), "not a changefeed"),
    ],
)
def test_garbage_raises_a_clear_error(key: bytes | None, value: bytes | None, reason: str) -> None:
    """Anything that is not a changefeed record of `messages` raises, saying why."""
    with pytest.raises(ChangefeedDecodeError, match=reason):
        decode_record(key, value)
