"""Helpers for relay tests: changefeed events and reading frames back."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from feedsvc.messages import Message
from feedsvc.relay.changefeed import Row

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def message(n: int) -> Message:
    """Message number `n`, with a deterministic id and creation time."""
    return Message(
        id=uuid.uuid5(uuid.NAMESPACE_OID, f"message {n}"),
        author="ann",
        text=f"message {n}",
        created_at=EPOCH + timedelta(seconds=n),
    )


def row(n: int) -> Row:
    """The changefeed row of message `n`."""
    return Row(message=message(n), updated=f"{1_700_000_000_000_000_000 + n}.0000000000")


def parse(frames: list[bytes]) -> list[tuple[str, str | None, dict[str, str] | None]]:
    """(id, event, data) of each frame; event and data None for an id-only frame."""
    out: list[tuple[str, str | None, dict[str, str] | None]] = []
    for frame in frames:
        fields = dict(
            line.split(": ", 1) for line in frame.decode().removesuffix("\n\n").split("\n")
        )
        data = json.loads(fields["data"]) if "data" in fields else None
        out.append((fields["id"], fields.get("event"), data))
    return out


def texts(frames: list[bytes]) -> list[str]:
    """The texts of the message events among `frames`."""
    return [data["text"] for _, event, data in parse(frames) if event == "message" and data]
