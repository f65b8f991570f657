"""What `Fanout.subscribe` answers when it cannot hand out a subscription at once."""

from __future__ import annotations

from dataclasses import dataclass

from feedsvc.relay.frames import EventId


@dataclass(frozen=True, slots=True)
class Reset:
    """The position cannot be served (not our id, or the topic was recreated)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ahead:
    """This process has not consumed the record at `offset` yet (warming up, or behind
    another replica): `await fanout.wait_past(offset)` with a timeout, then subscribe again."""

    offset: int


@dataclass(frozen=True, slots=True)
class ReplayFrom:
    """The position is older than the ring: serve it from Kafka through `relay.replay.Replay`."""

    after: EventId
