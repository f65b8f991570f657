"""SSE frames and event ids."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from feedsvc.messages import Message
from feedsvc.relay.frames import (
    PING,
    EventId,
    delete_frame,
    event_id,
    id_frame,
    message_frame,
    parse_event_id,
    reset_frame,
    resume_frame,
    retry_frame,
)

MESSAGE = Message(
    id=uuid.UUID("0b7f9e3c-4a57-4d8e-9a6b-1c2d3e4f5a6b"),
    author="ann",
    text="line one\nline two\r\nline three\u2028end",
    created_at=datetime(2024, 1, 1, tzinfo=UTC),
)


def _fields(frame: bytes) -> list[tuple[str, str]]:
    """Parse one frame the way an SSE client does: one field per line, blank line ends."""
    assert frame.endswith(b"\n\n")
    lines = frame[:-2].decode().split("\n")
    assert all("\r" not in line for line in lines)
    return [(line.split(":", 1)[0], line.split(":", 1)[1].removeprefix(" ")) for line in lines]


def test_message_frame_carries_one_line_of_json() -> None:
    """Newlines in the text are escaped, so `data:` is one line that parses back."""
    fields = _fields(message_frame("7-0b7f9e3c", MESSAGE))
    assert [name for name, _ in fields] == ["id", "event", "data"]
    assert dict(fields)["id"] == "7-0b7f9e3c"
    assert dict(fields)["event"] == "message"
    data = json.loads(dict(fields)["data"])
    assert data == {
        "id": str(MESSAGE.id),
        "author": "ann",
        "text": MESSAGE.text,
        "created_at": "2024-01-01T00:00:00Z",
    }


def test_delete_reset_resume_frames() -> None:
    """Each control event names itself and carries a JSON object."""
    assert dict(_fields(delete_frame("8-0b7f9e3c", MESSAGE.id))) == {
        "id": "8-0b7f9e3c",
        "event": "delete",
        "data": json.dumps({"id": str(MESSAGE.id)}, separators=(",", ":")),
    }
    reset = dict(_fields(reset_frame("9", "gone\nreally")))
    assert (reset["event"], json.loads(reset["data"])) == ("reset", {"reason": "gone\nreally"})
    resume = dict(_fields(resume_frame("9-0b7f9e3c", "slow")))
    assert resume["id"] == "9-0b7f9e3c"
    assert json.loads(resume["data"]) == {"last_event_id": "9-0b7f9e3c", "reason": "slow"}


def test_heartbeat_retry_and_id_only_frames() -> None:
    """A comment, a retry hint and an id without data dispatch no event."""
    assert PING == b": ping\n\n"
    assert retry_frame(3000) == b"retry: 3000\n\n"
    assert id_frame("5-0b7f9e3c") == b"id: 5-0b7f9e3c\n\n"


def test_event_id_round_trip() -> None:
    """An event id names the offset and the message tag, and parses back."""
    eid = event_id(42, MESSAGE.id)
    assert eid == "42-0b7f9e3c"
    assert parse_event_id(eid) == EventId(42, "0b7f9e3c")
    assert str(EventId(42, "0b7f9e3c")) == eid
    assert parse_event_id("42") == EventId(42, None)
    assert parse_event_id("-1") == EventId(-1, None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "42-",
        "42-XYZ",
        "042",
        "4-0b7f9e3",
        "1-0b7f9e3cd",
        "-2",
        "-1-0b7f9e3c",
        "1\n2",
        "99999999999999999999",
    ],
)
def test_foreign_ids_do_not_parse(text: str) -> None:
    """Anything that is not one of our ids is refused (the caller answers `reset`)."""
    assert parse_event_id(text) is None
