"""Hand-written fakes of what the submitter uses: its producer, the key lookup, the metrics.

Each implements the small Protocol of `feedsvc.http.submit` (`Producer`, `Keys`,
`Counters`) that the real adapter implements too; admission is the real `Admission`,
which does no I/O.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from feedsvc.messages import Message, decode_message


@dataclass
class FakeProducer:
    """Acknowledges each send at once, or when `gate` opens, or never (`hang`).

    `failures` are raised first, one per send; `calls` counts every send asked for.
    """

    hang: bool = False
    gate: anyio.Event | None = None
    failures: list[Exception] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)
    calls: int = 0

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if self.hang:
            await anyio.sleep_forever()
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append(decode_message(value))


@dataclass
class FakeKeys:
    """`MessageStore.get` over a dict, or one that never answers (`hang`).

    Note: a hung read, once cancelled, takes 2 s more to end, as psycopg's does
    while it asks a server that does not answer to cancel the query.
    """

    rows: dict[uuid.UUID, Message] = field(default_factory=dict)
    hang: bool = False
    lookups: int = 0

    async def get(self, message_id: uuid.UUID) -> Message | None:
        self.lookups += 1
        if self.hang:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.shield(asyncio.sleep(2))
                raise
        return self.rows.get(message_id)


class RecordingMetrics:
    """Counts what it is told, by name and labels; refuses a counter never declared."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.declared: set[str] = set()
        self.gauges: dict[str, Callable[[], float | None]] = {}

    def counter(self, name: str, help_text: str) -> None:
        self.declared.add(name)

    def gauge(self, name: str, help_text: str, read: Callable[[], float | None]) -> None:
        self.gauges[name] = read

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        assert name in self.declared, f"{name} was never declared"
        key = (name, tuple(sorted(labels.items())))
        self.counts[key] = self.counts.get(key, 0) + amount

    def count(self, name: str, **labels: str) -> float:
        """How much `name` with exactly these labels was incremented (0 if never)."""
        return self.counts.get((name, tuple(sorted(labels.items()))), 0)
