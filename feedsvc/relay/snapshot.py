"""A stream filtered by its history's snapshot time T (ARCHITECTURE.md#feed-position)."""

from __future__ import annotations

from feedsvc.relay.frames import snapshot_frame
from feedsvc.relay.log import Entries


def filtered(entries: Entries, snapshot: int) -> tuple[list[bytes], str | None, int | None]:
    """Frames of `entries` for a stream filtered by history snapshot T (see `snapshot_frame`).

    Returns the frames, the id of the last one, and the snapshot still in force after them:
    None once an entry follows a resolved timestamp >= T (no row committed at or before T
    can come after it, so plain ids suffice from there on).
    """
    frames: list[bytes] = []
    last: str | None = None
    active: int | None = snapshot
    for i, event in enumerate(entries.events):
        resolved = entries.resolved[i]
        if active is not None and resolved is not None and resolved >= active:
            active = None
        if active is None:
            frames.append(entries.frames[i])
            last = entries.ids[i]
        else:
            last, frame = snapshot_frame(entries.offsets[i], event, active)
            frames.append(frame)
    return frames, last, active
