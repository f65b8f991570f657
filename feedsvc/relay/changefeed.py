"""CockroachDB changefeed records of `messages.committed`, decoded into rows, deletes and resolved.

The changefeed is `CREATE CHANGEFEED FOR TABLE messages INTO 'kafka://...' WITH updated,
resolved` in the default JSON format and wrapped envelope:
https://www.cockroachlabs.com/docs/stable/changefeed-messages
https://www.cockroachlabs.com/docs/stable/create-changefeed

- row:      key `["<id>"]` (the primary key as a JSON array),
            value `{"after": {<columns>}, "updated": "<hlc>"}`
- delete:   the same key, value `{"after": null, "updated": "<hlc>"}`
- resolved: null key, value `{"resolved": "<hlc>"}`; the Kafka sink sends it to every
            partition: https://www.cockroachlabs.com/docs/stable/changefeed-sinks
An HLC timestamp is `"<wall-clock nanoseconds>.<10-digit logical counter>"`.

Column rendering follows CockroachDB's `tree.AsJSON` (pkg/sql/sem/tree/datum.go): UUID as
its bare string; TIMESTAMPTZ as Go's RFC3339Nano (`2024-01-01T00:00:00.123456Z`, trailing
zeros of the fraction dropped) and TIMESTAMP without a zone in UTC. Older tooling and
PostgreSQL's text output use `2024-01-01 00:00:00.123456+00[:00]`; all of these decode.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import msgspec

from feedsvc.messages import FEED_RESTART_KEY, Message, decode_feed_restart

_HLC = re.compile(r"\A[0-9]{1,20}\.[0-9]{10}\Z")


class Row(msgspec.Struct, frozen=True):
    """A committed insert (or update) of a message; `updated` is its commit HLC, if sent."""

    message: Message
    updated: str | None


class Delete(msgspec.Struct, frozen=True):
    """A committed delete of the message `id`."""

    id: uuid.UUID
    updated: str | None


class Resolved(msgspec.Struct, frozen=True):
    """A checkpoint: every change committed at or before `hlc` has been emitted."""

    hlc: str


class Gap(msgspec.Struct, frozen=True):
    """Not a changefeed record: setup's marker that a new changefeed starts after a gap
    (`feedsvc.messages.FeedRestart`); no position before it can be resumed."""

    reason: str


Record = Row | Delete | Resolved | Gap


class ChangefeedDecodeError(ValueError):
    """A record that is not a changefeed record of `messages`; the message says why."""


class _After(msgspec.Struct, frozen=True):
    # Unknown fields are allowed: a column added later must not stop the feed.
    id: uuid.UUID
    author: str
    text: str
    created_at: str


class _Envelope(msgspec.Struct, frozen=True):
    after: _After | msgspec.UnsetType | None = msgspec.UNSET
    updated: str | None = None
    resolved: str | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_key_decoder = msgspec.json.Decoder(tuple[uuid.UUID])


def decode_record(key: bytes | None, value: bytes | None) -> Record:
    """Decode one Kafka record of `messages.committed`; raises `ChangefeedDecodeError`."""
    if value is None:
        raise ChangefeedDecodeError("record has no value (a tombstone is not a changefeed record)")
    if key == FEED_RESTART_KEY:
        try:
            marker = decode_feed_restart(value)
        except msgspec.MsgspecError as exc:
            raise ChangefeedDecodeError(
                f"a feed restart marker that does not decode: {exc}"
            ) from None
        return Gap(f"the changefeed restarted with a gap: {marker.reason}")
    try:
        envelope = _envelope_decoder.decode(value)
    except msgspec.DecodeError as exc:
        raise ChangefeedDecodeError(f"value is not a changefeed envelope: {exc}") from None
    if envelope.resolved is not None:
        return Resolved(hlc=_hlc(envelope.resolved, "resolved"))
    if envelope.after is msgspec.UNSET:
        raise ChangefeedDecodeError("value has neither `after` nor `resolved`")
    updated = None if envelope.updated is None else _hlc(envelope.updated, "updated")
    key_id = _key(key)
    if envelope.after is None:
        if key_id is None:
            raise ChangefeedDecodeError('a delete (`after: null`) needs the key `["<id>"]`')
        return Delete(id=key_id, updated=updated)
    after = envelope.after
    if key_id is not None and key_id != after.id:
        raise ChangefeedDecodeError(f"key {key_id} does not match `after.id` {after.id}")
    message = Message(
        id=after.id,
        author=after.author,
        text=after.text,
        created_at=parse_timestamp(after.created_at),
    )
    return Row(message=message, updated=updated)


def hlc_value(text: str) -> int:
    """An HLC string as one integer, in the same order: wall nanoseconds, then the counter."""
    wall, _, logical = text.partition(".")
    return int(wall) * 10**10 + int(logical or 0)


def parse_timestamp(text: str) -> datetime:
    """A TIMESTAMPTZ as a changefeed (or PostgreSQL) renders it, as an aware UTC datetime."""
    try:
        # fromisoformat (3.11) takes `T` or a space, `Z`/`+00`/`+00:00`, and nanoseconds.
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ChangefeedDecodeError(f"created_at {text!r} is not an ISO 8601 timestamp") from None
    if value.tzinfo is None:
        # A zone-less value is a TIMESTAMP column, which the changefeed renders in UTC.
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _key(key: bytes | None) -> uuid.UUID | None:
    if key is None:
        return None
    try:
        return _key_decoder.decode(key)[0]
    except msgspec.DecodeError as exc:
        raise ChangefeedDecodeError(f'key is not ["<uuid>"]: {exc}') from None


def _hlc(text: str, field: str) -> str:
    if not _HLC.match(text):
        raise ChangefeedDecodeError(f"{field} {text!r} is not an HLC timestamp")
    return text
