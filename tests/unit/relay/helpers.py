"""Helpers for relay tests: changefeed events and reading frames back."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from feedsvc.messages import Message
from feedsvc.relay.changefeed import Row
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.subscription import Subscription

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


async def next_frames(sub: Subscription) -> list[bytes]:
    """The next batch of `sub`'s frames, waiting for one; empty when the stream ended."""
    frames = await sub.next_frames_within(None)
    assert frames is not None
    return frames


async def batches(sub: Subscription) -> AsyncIterator[list[bytes]]:
    """Every batch of `sub`'s frames until the stream ends."""
    while frames := await next_frames(sub):
        yield frames


def fanout_with(n: int, ring_size: int = 100, buffer_size: int = 50) -> Fanout:
    """A fanout that has published messages 0..n-1 at offsets 0..n-1."""
    fan = Fanout(ring_size, buffer_size)
    for i in range(n):
        fan.publish(i, row(i))
    return fan


def subscribed(answer: object) -> Subscription:
    """`answer`, which must be a subscription."""
    assert isinstance(answer, Subscription), answer
    return answer
