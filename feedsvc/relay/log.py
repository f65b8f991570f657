"""The frame log: the feed's recent events, encoded once, numbered by a sequence.

One log serves every subscriber (each keeps a sequence number as its cursor) and doubles
as the resume ring. Entries are kept in parallel lists (cheap to slice for a batch) and
compacted in bulk once twice the ring has piled up, so an append is O(1) amortised.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from feedsvc.relay.changefeed import Delete, Row


@dataclass(frozen=True, slots=True)
class Entries:
    """A slice of the log: parallel lists, one item per event."""

    frames: list[bytes]
    ids: list[str]
    offsets: list[int]
    events: list[Row | Delete]
    resolved: list[int | None]
    """The highest resolved timestamp before each event's offset (None: none yet)."""


class FrameLog:
    """Events in offset order; sequence number `n` is the n-th event ever appended."""

    def __init__(self, ring_size: int, floor: int) -> None:
        self.ring_size = ring_size
        self._frames: list[bytes] = []
        self._ids: list[str] = []
        self._offsets: list[int] = []
        self._events: list[Row | Delete] = []
        self._resolved: list[int | None] = []
        self._read_at: list[float] = []
        self._base = 0
        self._evicted_floor = floor

    @property
    def seq(self) -> int:
        """The sequence number the next event will get."""
        return self._base + len(self._frames)

    @property
    def oldest(self) -> int:
        """The sequence number of the oldest event still in the ring."""
        return max(self._base, self.seq - self.ring_size)

    @property
    def floor(self) -> int:
        """Every event at offsets `floor` and later (up to the reader's head) is in the ring."""
        evicted = len(self._offsets) - self.ring_size
        return self._offsets[evicted - 1] + 1 if evicted > 0 else self._evicted_floor

    def move_floor(self, floor: int) -> None:
        """Declare the ring complete from `floor` on (only while it is empty)."""
        if self._frames:
            raise RuntimeError("the floor of a non-empty log cannot move")
        self._evicted_floor = floor

    @property
    def last_id(self) -> str | None:
        """The id of the newest event, if any."""
        return self._ids[-1] if self._ids else None

    def append(
        self,
        offset: int,
        event: Row | Delete,
        eid: str,
        frame: bytes,
        resolved: int | None,
        read_at: float = 0.0,
    ) -> None:
        """Add the event at `offset` (offsets increase), read from Kafka at `read_at`
        (`time.monotonic()`)."""
        self._frames.append(frame)
        self._ids.append(eid)
        self._offsets.append(offset)
        self._events.append(event)
        self._resolved.append(resolved)
        self._read_at.append(read_at)
        if len(self._frames) >= 2 * self.ring_size:
            self._compact()

    def since(self, seq: int) -> Entries:
        """Every event from sequence number `seq` (at least `oldest`) on."""
        start = seq - self._base
        return Entries(
            self._frames[start:],
            self._ids[start:],
            self._offsets[start:],
            self._events[start:],
            self._resolved[start:],
        )

    def frames_since(self, seq: int) -> list[bytes]:
        """The frames from sequence number `seq` on (the hot path: one slice)."""
        return self._frames[seq - self._base :]

    def read_at(self, seq: int) -> float:
        """When the event at sequence number `seq` (in the log) was read from Kafka."""
        return self._read_at[seq - self._base]

    def id_before(self, seq: int) -> str:
        """The id of the event just before sequence number `seq` (which must be in the log)."""
        return self._ids[seq - 1 - self._base]

    def seq_after(self, offset: int) -> int:
        """The sequence number of the first event in the ring past `offset`."""
        start = self.oldest - self._base
        return self._base + bisect_right(self._offsets, offset, lo=start)

    def find(self, offset: int) -> tuple[int, str] | None:
        """(sequence number, id) of the event at `offset` if the ring holds one."""
        start = self.oldest - self._base
        i = bisect_left(self._offsets, offset, lo=start)
        if i == len(self._offsets) or self._offsets[i] != offset:
            return None
        return self._base + i, self._ids[i]

    def _compact(self) -> None:
        drop = len(self._frames) - self.ring_size
        self._evicted_floor = self._offsets[drop - 1] + 1
        for log in (
            self._frames,
            self._ids,
            self._offsets,
            self._events,
            self._resolved,
            self._read_at,
        ):
            del log[:drop]
        self._base += drop
