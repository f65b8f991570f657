"""Dropping changefeed repeats of any length, so that every reader drops the same records.

The changefeed is at-least-once: after a restart or a job adoption it re-emits everything
since its last checkpoint, however long ago:
https://www.cockroachlabs.com/docs/stable/changefeed-messages#duplicate-messages
Two rules find every repeat, whatever its distance from the original:

1. Resolved. Once a `resolved` timestamp R is in the topic, "no previously unseen rows with
   an earlier update timestamp will be emitted":
   https://www.cockroachlabs.com/docs/stable/changefeed-messages#resolved-messages
   So a row whose `updated` is at or below the highest resolved before it is a repeat.
2. Window. A repeat of a row not yet covered by a resolved (the unresolved tail) is found by
   its (kind, id, updated) among the `window` offsets before it.

Determinism: a decision depends only on the highest resolved before the record and the
records in the window before it. A reader that starts at offset `s > 0` (a relay warming
up, a replay) decides exactly as one that read from offset 0 once (a) it has read a whole
window and (b) it has seen a resolved record: resolved timestamps never decrease along the
topic (the resolved timestamp is the job's high-water mark, emitted only after a checkpoint,
and a restarted job resumes from that checkpoint: same page, #resolved-messages), so the
first one it sees is the highest so far. `exact_at` says when that holds.
Completeness assumes the unresolved tail is shorter than the window: every row is covered
by a resolved record within `window` records of its first emission (a resolved every
second, a window of tens of thousands of records). A longer tail is not a wrong decision,
only a repeat delivered again, identically by every reader.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from feedsvc.relay.changefeed import Delete, Row, hlc_value


def dedupe_key(event: Row | Delete) -> Hashable:
    """What makes two records the same event: kind, message id and `updated` (the version)."""
    if isinstance(event, Row):
        return ("row", event.message.id, event.updated)
    return ("delete", event.id, event.updated)


class Deduper:
    """Says whether a row or delete repeats an earlier record of the topic.

    Note: feed every record (`resolved` for resolved ones, `is_duplicate` for rows and
    deletes) in increasing offset order; memory is bounded by the window.
    """

    def __init__(self, window: int, start: int = 0) -> None:
        if window < 1:
            raise ValueError("the dedupe window must hold at least one offset")
        self.window = window
        self.start = start
        """The first offset fed."""
        self.resolved: int | None = None
        """The highest resolved timestamp seen (as `hlc_value`), None before the first."""
        self._resolved_at: int | None = None
        self._last: dict[Hashable, int] = {}
        self._order: deque[tuple[int, Hashable]] = deque()

    def exact_at(self, offset: int) -> bool:
        """Whether decisions from `offset` on are those of a reader that began at offset 0."""
        first = self.exact_from
        return first is not None and offset >= first

    @property
    def exact_from(self) -> int | None:
        """The first offset `exact_at` holds for, once known."""
        if self.start == 0:
            return 0
        if self._resolved_at is None:
            return None
        return max(self.start + self.window, self._resolved_at + 1)

    def see_resolved(self, offset: int, hlc: str) -> None:
        """Record a resolved timestamp at `offset`."""
        value = hlc_value(hlc)
        if self.resolved is None or value > self.resolved:
            self.resolved = value
        if self._resolved_at is None:
            self._resolved_at = offset

    def is_duplicate(self, offset: int, event: Row | Delete) -> bool:
        """Record the row or delete at `offset`; True when it repeats an earlier record."""
        key = dedupe_key(event)
        horizon = offset - self.window
        order, last = self._order, self._last
        while order and order[0][0] <= horizon:
            old_offset, old_key = order.popleft()
            # Forget a key only when this was its latest sighting.
            if last.get(old_key) == old_offset:
                del last[old_key]
        seen = key in last
        last[key] = offset
        order.append((offset, key))
        if seen:
            return True
        updated = event.updated
        if updated is None or self.resolved is None:
            return False
        return hlc_value(updated) <= self.resolved

    def __len__(self) -> int:
        return len(self._last)
