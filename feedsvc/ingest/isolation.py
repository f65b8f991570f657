"""Inserting a batch so that the rows the database refuses never hold back the others."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

import anyio
import psycopg

from feedsvc.ingest.retry import until_done
from feedsvc.messages import Message
from feedsvc.store import is_refusal


class Store(Protocol):
    """What the writer needs of the message table (`MessageStore` is one)."""

    async def insert(self, messages: Sequence[Message]) -> int:
        """Store the messages whose id is not stored yet, all or none."""
        ...


async def insert_isolating(
    store: Store,
    messages: Sequence[Message],
    stopping: anyio.Event,
    on_retry: Callable[[str], None] | None = None,
) -> list[tuple[Message, Exception]]:
    """Insert every message the database takes; returns the refused ones, each with its error.

    Note: a batch is one statement, stored whole or not at all, so a refusal splits it
    in halves until each refused row stands alone: one bad row among n costs about
    2·log2(n) more statements, and every good row is stored whatever shares its batch.
    Only a refusal (`store.is_refusal`) splits; a transient error, or one that blames
    no row (a missing table, a lost privilege), is retried with backoff and never
    skips a row. `BatchAbandoned` when told to stop during an outage.
    """
    refused: list[tuple[Message, Exception]] = []
    pending = [list(messages)] if messages else []
    while pending:
        chunk = pending.pop()
        try:
            await until_done(
                partial(store.insert, chunk),
                _retriable,
                stopping,
                "insert",
                on_retry=on_retry,
                rows=len(chunk),
            )
        except Exception as exc:
            if not is_refusal(exc):
                raise
            if len(chunk) == 1:
                refused.append((chunk[0], exc))
                continue
            middle = len(chunk) // 2
            # The first half is inserted first, so the stored rows keep record order.
            pending += [chunk[middle:], chunk[:middle]]
    return refused


def _retriable(exc: Exception) -> bool:
    return isinstance(exc, psycopg.Error) and not is_refusal(exc)
