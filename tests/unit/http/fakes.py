"""Hand-written fakes of what the submitter uses: its producer and the key lookup.

Each implements the small Protocol of `feedsvc.http.submit` (`Producer`, `Keys`) that
the real adapter implements too. Admission and metrics are the real ones (no I/O);
`sample` reads a metric as a scrape would, from the rendered text.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field

import anyio

from feedsvc.messages import Message, decode_message
from feedsvc.metrics import Metrics


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

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes, *, headers: list[tuple[str, bytes]]
    ) -> None:
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


def samples(metrics: Metrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every series of `name` in the metrics' Prometheus text, by its labels, as scraped."""
    text = metrics.render()
    lines = text.decode() if isinstance(text, bytes) else text
    found: dict[frozenset[tuple[str, str]], float] = {}
    for line in lines.splitlines():
        series, _, value = line.rpartition(" ")
        metric, _, labels = series.partition("{")
        if metric == name and not line.startswith("#"):
            found[frozenset(re.findall(r'(\w+)="([^"]*)"', labels))] = float(value)
    return found


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The value of one series (0 when it has none yet), whatever the labels' order."""
    return samples(metrics, name).get(frozenset(labels.items()), 0.0)
