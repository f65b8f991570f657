"""Dropping changefeed duplicates, deterministically, so every process drops the same records.

The changefeed is at-least-once; after a restart it re-emits everything since its last
checkpoint, so a duplicate can land far from the original:
https://www.cockroachlabs.com/docs/stable/changefeed-messages#duplicate-messages
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from feedsvc.relay.changefeed import Delete, Row


def dedupe_key(event: Row | Delete) -> Hashable:
    """What makes two records the same event: the message id, and whether it is a delete."""
    if isinstance(event, Row):
        return event.message.id
    return ("delete", event.id)


class Deduper:
    """Says whether a record repeats one among the `window` offsets before it.

    Note: the answer depends only on the records at offsets `(offset - window, offset)`, so
    any reader that has fed those records (a relay in another process, a replay from Kafka)
    drops exactly the same records; feed offsets in increasing order.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("the dedupe window must hold at least one offset")
        self.window = window
        self._last: dict[Hashable, int] = {}
        self._order: deque[tuple[int, Hashable]] = deque()

    def is_duplicate(self, offset: int, key: Hashable) -> bool:
        """Record `key` at `offset`; True when it was already seen within the window."""
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
        return seen

    def __len__(self) -> int:
        return len(self._last)
