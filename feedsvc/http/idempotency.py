"""Idempotency-Key: what an earlier request with the same key left, and when a key is reused.

The rules follow the IETF draft "The Idempotency-Key HTTP Header Field"
(https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-idempotency-key-header,
section "Error Scenarios"): a key reused with a different payload is refused with
422; a retry of a completed request gets that request's result.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import NamedTuple

from feedsvc.messages import Message


class KeyReused(Exception):
    """The key's message exists with another text; the draft's answer is 422."""


class Earlier(NamedTuple):
    """A message an earlier request with the same key produced."""

    message: Message
    acknowledged: bool
    """Kafka acknowledged it (or the database has it): a retry need not send it again."""


class KeyLedger:
    """The messages this process sent under an Idempotency-Key lately, by id.

    Note: it closes the window between a send and the writer's insert, in which
    the database does not know the key yet, for requests reaching the same
    process. It is bounded: past `size` entries the oldest is forgotten, and the
    database answers for it once the writer stored it.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._entries: OrderedDict[uuid.UUID, Earlier] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, message_id: uuid.UUID) -> Earlier | None:
        """The message sent under this id here lately, if any."""
        return self._entries.get(message_id)

    def sending(self, message: Message) -> None:
        """A send of `message` begins; until it is acknowledged a retry sends it again."""
        if message.id not in self._entries:
            self._remember(Earlier(message, acknowledged=False))

    def acknowledged(self, message: Message) -> None:
        """Kafka has `message`: a retry with the same text is answered from here."""
        self._remember(Earlier(message, acknowledged=True))

    def _remember(self, earlier: Earlier) -> None:
        self._entries[earlier.message.id] = earlier
        self._entries.move_to_end(earlier.message.id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
