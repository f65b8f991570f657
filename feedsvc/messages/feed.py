"""The feed's shapes: the `data:` of its SSE notices, and the gap marker in `messages.committed`.

Note: the frames around these payloads (`id:`, `event:`, `data:` lines, `retry:`) and the
event ids are built in `feedsvc.relay.frames`; the `data:` of an `event: message` is a
`Message`.
"""

from __future__ import annotations

import uuid

import msgspec

_encoder = msgspec.json.Encoder()


class Deleted(msgspec.Struct, frozen=True):
    """The `data:` of an `event: delete`: the message that no longer exists."""

    id: uuid.UUID


class ResetNotice(msgspec.Struct, frozen=True):
    """The `data:` of an `event: reset`: the resume position could not be served."""

    reason: str


class ResumeNotice(msgspec.Struct, frozen=True):
    """The `data:` of an `event: resume`: reconnect with `last_event_id` to continue."""

    last_event_id: str
    reason: str


class FeedRestart(msgspec.Struct, frozen=True, kw_only=True):
    """The marker setup writes into `messages.committed` before a changefeed that has a gap.

    Note: the relay treats its offset as a boundary: a client whose position is below it,
    or who is live when it arrives, gets `reset` (history from scratch), never a silent
    gap. Its key is `FEED_RESTART_KEY`, which no changefeed record has (theirs are JSON).
    """

    reason: str
    previous_job: int | None
    previous_high_water: str | None
    at: str
    """The cluster's HLC when the gap was detected; the new changefeed starts after it."""


FEED_RESTART_KEY = b"feedsvc-feed-restart"


class _FeedRestartRecord(msgspec.Struct, frozen=True):
    feed_restart: FeedRestart


def encode_feed_restart(marker: FeedRestart) -> bytes:
    """The marker's record value: `{"feed_restart": {...}}` (not a changefeed envelope)."""
    return _encoder.encode(_FeedRestartRecord(marker))


def decode_feed_restart(data: bytes) -> FeedRestart:
    """A marker from its record value; raises msgspec errors on anything else."""
    return msgspec.json.decode(data, type=_FeedRestartRecord).feed_restart
