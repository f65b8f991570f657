"""Server-Sent Events frames of the feed, pre-encoded once as bytes, and the feed's event ids.

Frame syntax: https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream
Every `data:` payload is one line of JSON (a `Message` or one of the shapes in
`feedsvc.messages.feed`): msgspec escapes newlines inside strings, and an SSE line break
inside `data:` would otherwise split the payload.

Event id `"<offset>-<tag>"`: the Kafka offset of the record in `messages.committed` (one
partition, so the offset is the feed position) and the first 8 hex digits of the message
id, so that a resume against a recreated topic, where that offset holds another message,
is detected. `"<offset>"` alone names a position without that check. Either may end in
`"~<snapshot>"`: the history snapshot time T (an HLC, base 36) a stream started with;
from such a position the rows with `updated` <= T are not sent (`feedsvc.relay.stream`).
Ids are opaque to clients: they only send the last one back.
"""

from __future__ import annotations

import re
import uuid
from typing import NamedTuple

import msgspec

from feedsvc.messages import Deleted, Message, ResetNotice, ResumeNotice
from feedsvc.relay.changefeed import Delete, Row, hlc_value

PING = b": ping\n\n"
"""A comment heartbeat: keeps proxies from closing an idle stream, dispatches no event."""

EVENT_ID_PATTERN = r"\A(-1|0|[1-9][0-9]{0,18})(?:-([0-9a-f]{8}))?(?:~([0-9a-z]{1,24}))?\Z"
"""Every event id the feed sends (the OpenAPI spec shows it too)."""
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_encoder = msgspec.json.Encoder()


class EventId(NamedTuple):
    """A parsed event id: the offset last seen, the message tag expected there, and the
    history snapshot time (an `hlc_value`) still filtering the stream, if any."""

    offset: int
    tag: str | None
    snapshot: int | None = None

    def __str__(self) -> str:
        text = str(self.offset) if self.tag is None else f"{self.offset}-{self.tag}"
        return text if self.snapshot is None else f"{text}~{_base36(self.snapshot)}"

    def at(self, snapshot: int | None) -> EventId:
        """The same position with another snapshot."""
        return EventId(self.offset, self.tag, snapshot)


def _base36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        value, rest = divmod(value, 36)
        out = digits[rest] + out
        if not value:
            return out


def tag_of(message_id: uuid.UUID) -> str:
    """The tag of a message id in event ids: its first 8 hex digits."""
    return message_id.hex[:8]


def event_id(offset: int, message_id: uuid.UUID) -> str:
    """The SSE id of the event at `offset` carrying message `message_id`."""
    return f"{offset}-{message_id.hex[:8]}"


def parse_event_id(text: str) -> EventId | None:
    """An event id sent back as `Last-Event-ID`, or None when it is not one of ours."""
    match = _EVENT_ID.match(text.strip())
    if match is None or (match.group(1) == "-1" and match.group(2) is not None):
        return None
    snapshot = None if match.group(3) is None else int(match.group(3), 36)
    return EventId(int(match.group(1)), match.group(2), snapshot)


def event_frame(offset: int, event: Row | Delete) -> tuple[str, bytes]:
    """The event id and the frame of a changefeed row or delete at `offset`."""
    if isinstance(event, Row):
        eid = event_id(offset, event.message.id)
        return eid, message_frame(eid, event.message)
    eid = event_id(offset, event.id)
    return eid, delete_frame(eid, event.id)


def snapshot_frame(offset: int, event: Row | Delete, snapshot: int) -> tuple[str, bytes]:
    """The event id and frame at `offset` for a stream still filtered by history snapshot T.

    Note: a row or delete with `updated` <= T was committed before the history read (it is
    history, or older history): only its id is sent. Both keep T in the id, so a resume
    from it filters the same way.
    """
    message_id = event.message.id if isinstance(event, Row) else event.id
    eid = str(EventId(offset, tag_of(message_id), snapshot))
    if event.updated is not None and hlc_value(event.updated) <= snapshot:
        return eid, id_frame(eid)
    if isinstance(event, Row):
        return eid, message_frame(eid, event.message)
    return eid, delete_frame(eid, event.id)


def _frame(eid: str, event: bytes, data: bytes) -> bytes:
    return b"".join((b"id: ", eid.encode(), b"\nevent: ", event, b"\ndata: ", data, b"\n\n"))


def message_frame(eid: str, message: Message) -> bytes:
    """`event: message` carrying the message as JSON."""
    return _frame(eid, b"message", _encoder.encode(message))


def delete_frame(eid: str, message_id: uuid.UUID) -> bytes:
    """`event: delete` carrying `{"id": ...}` of the deleted message."""
    return _frame(eid, b"delete", _encoder.encode(Deleted(message_id)))


def reset_frame(eid: str, reason: str) -> bytes:
    """`event: reset`: the client's position is lost; history from scratch follows."""
    return _frame(eid, b"reset", _encoder.encode(ResetNotice(reason)))


def resume_frame(eid: str, reason: str) -> bytes:
    """`event: resume`, the last frame of a stream the server ends; `id:` repeats the last one."""
    return _frame(eid, b"resume", _encoder.encode(ResumeNotice(eid, reason)))


def id_frame(eid: str) -> bytes:
    """Only `id:`: moves the client's Last-Event-ID past an event it must not see twice.

    Note: per the SSE spec the id is taken even though no event is dispatched (no data).
    """
    return b"".join((b"id: ", eid.encode(), b"\n\n"))


def retry_frame(milliseconds: int) -> bytes:
    """`retry:`: how long the browser waits before reconnecting."""
    return f"retry: {int(milliseconds)}\n\n".encode()
