"""Hand-written fakes of what the submitter uses: its producer, its key claims, their store.

Each implements the small Protocol (`submit.Producer`, `submit.Claims`,
`idempotency.ClaimStore`) that the real one implements too. Admission and metrics are
the real ones (no I/O);
`sample` reads a metric as a scrape would, from the rendered text.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from feedsvc.http.idempotency import Bound, KeyReused, KeyUnchecked
from feedsvc.messages import KeyClaim, Message, decode_message
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
class FakeClaims:
    """`KeyClaims.claim` over a dict: binds at once, when `gate` opens, or never (`hang`).

    `stored` are the ids the database has; `calls` counts every claim asked for.
    """

    bound: dict[uuid.UUID, Message] = field(default_factory=dict)
    stored: set[uuid.UUID] = field(default_factory=set)
    hang: bool = False
    gate: anyio.Event | None = None
    calls: int = 0

    async def claim(self, message: Message, until: float) -> Bound:
        self.calls += 1
        try:
            async with asyncio.timeout_at(until):
                if self.hang:
                    await anyio.sleep_forever()
                if self.gate is not None:
                    await self.gate.wait()
        except TimeoutError:
            raise KeyUnchecked("no answer") from None
        first = self.bound.setdefault(message.id, message)
        if first.text != message.text:
            raise KeyReused("Idempotency-Key was already used for a different text")
        return Bound(first, message.id in self.stored)


@dataclass
class FakeClaimStore:
    """`MessageStore.claim` over dicts; each statement waits for `gate` if set, `failures`
    are raised first, one per statement, and `statements` records each one's ids."""

    claims: dict[uuid.UUID, KeyClaim] = field(default_factory=dict)
    stored: set[uuid.UUID] = field(default_factory=set)
    gate: anyio.Event | None = None
    hang: bool = False
    failures: list[Exception] = field(default_factory=list)
    statements: list[list[uuid.UUID]] = field(default_factory=list)

    async def claim(self, claims: Sequence[KeyClaim]) -> dict[uuid.UUID, tuple[KeyClaim, bool]]:
        ids = [c.id for c in claims]
        assert len(set(ids)) == len(ids), "one statement cannot touch a row twice"
        self.statements.append(ids)
        if self.failures:
            raise self.failures.pop(0)
        if self.hang:
            await anyio.sleep_forever()
        if self.gate is not None:
            await self.gate.wait()
        return {c.id: (self.claims.setdefault(c.id, c), c.id in self.stored) for c in claims}


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
