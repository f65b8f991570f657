"""Idempotency-Key: a key bound to its first text in the database, for every replica.

The rules follow the IETF draft "The Idempotency-Key HTTP Header Field"
(https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-idempotency-key-header,
section "Error Scenarios"): a key reused with a different payload is refused with
422; a retry of a completed request gets that request's result.

A key is claimed before anything is sent: its message id (derived from author and key)
is bound to a digest of the text in `key_claims`, once, by whichever request gets there
first, on any worker of any replica (ARCHITECTURE.md#idempotency-key). Claims waiting at
the same time share one statement (`KeyClaims.run`). A key that cannot be claimed (the
database is down or late) is refused, never sent unchecked: a second text could then be
accepted on another replica and lost.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import psycopg

from feedsvc.messages import KeyClaim, Message, text_digest

QUIET_S = 1.0
"""After a claim found the database failing, claims are refused at once for this long, so
that during an outage keyed posts do not each hold an in-flight slot for half their budget;
the first claim after it tries the database again."""

STARVED_S = 0.5
"""A claim given less time than this that times out does not count as the database failing."""

BATCH = 256
"""Claims per statement at most: a statement's parameters stay far below the protocol's
65,535, and one turn of a burst does not hold the connection for long."""


_Answer = asyncio.Future[tuple[KeyClaim, bool]]


class KeyReused(Exception):
    """The key is bound to another text; the draft's answer is 422."""


class KeyUnchecked(Exception):
    """The key could not be claimed in time (the database is down or late): refuse, retry."""


class Bound(NamedTuple):
    """What an Idempotency-Key is bound to, for a request with the same text."""

    message: Message
    """The message to answer and send: the first request's id and `created_at`."""
    stored: bool
    """The database has it already: nothing need be sent."""


class ClaimStore(Protocol):
    """Where keys are bound (`store.MessageStore` is one)."""

    async def claim(self, claims: Sequence[KeyClaim]) -> dict[uuid.UUID, tuple[KeyClaim, bool]]:
        """Bind each id unless bound; the binding that holds and whether it is stored."""
        ...


class KeyClaims:
    """Claims Idempotency-Keys in the database, every claim waiting at once in one statement.

    Note: `run` must be running (in the process's task group) for claims to be answered.
    A claim whose request gives up stays bound if its statement went through: a retry
    with the same text then finds it, and another text is refused.
    """

    def __init__(self, store: ClaimStore, quiet_s: float = QUIET_S) -> None:
        self._store = store
        self._quiet_s = quiet_s
        self._failed_at: float | None = None
        self._waiting: dict[_Answer, KeyClaim] = {}
        self._wake = asyncio.Event()

    @property
    def waiting(self) -> int:
        """Claims not in a statement yet."""
        return len(self._waiting)

    async def claim(self, message: Message, until: float) -> Bound:
        """Bind `message`'s id to its text, or say what it is bound to, by `until` (loop time).

        Raises `KeyReused` when it is bound to another text, `KeyUnchecked` when the
        database gave no answer by `until`.
        """
        loop = asyncio.get_running_loop()
        if self._failed_at is not None and loop.time() - self._failed_at < self._quiet_s:
            raise KeyUnchecked("the database failed a claim just now")
        mine = KeyClaim(message.id, text_digest(message.text), message.created_at)
        answer: _Answer = loop.create_future()
        given = until - loop.time()
        self._waiting[answer] = mine
        self._wake.set()
        try:
            async with asyncio.timeout_at(until):
                bound, stored = await answer
        except TimeoutError:
            if given >= STARVED_S:  # a claim left almost no time says nothing of the database
                self._failed_at = loop.time()
            raise KeyUnchecked("the database did not answer in time") from None
        finally:
            self._waiting.pop(answer, None)  # gave up before its turn: not sent at all
        if bound.digest != mine.digest:
            raise KeyReused("Idempotency-Key was already used for a different text")
        earlier = Message(message.id, message.author, message.text, bound.created_at)
        return Bound(earlier, stored)

    async def run(self) -> None:
        """Answer waiting claims, one statement at a time, until cancelled.

        Note: claims that arrive while a statement runs wait for the next one, so a burst
        costs a few statements, not one each; the api's pool is small on purpose
        (ARCHITECTURE.md#licence-throttle). A statement is never cancelled (psycopg waits
        for the server to confirm a cancel); a request gives up on its own deadline.
        """
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                taken = list(self._waiting.items())[:BATCH]
                for answer, _ in taken:
                    del self._waiting[answer]
                await self._answer(taken)

    async def _answer(self, taken: list[tuple[_Answer, KeyClaim]]) -> None:
        distinct = list({c.id: c for _, c in reversed(taken)}.values())  # the first per id
        try:
            bound = await self._store.claim(distinct)
        except psycopg.Error as exc:
            self._failed_at = asyncio.get_running_loop().time()
            for answer, _ in taken:
                if not answer.done():
                    answer.set_exception(KeyUnchecked(f"the database failed the claim: {exc!r}"))
            return
        self._failed_at = None
        for answer, c in taken:
            if not answer.done():
                answer.set_result(bound[c.id])
