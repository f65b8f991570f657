"""One poster for the drills: posts one author's messages until stopped, keeping every answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx

from tests.support import wait_for


class Poster:
    """Posts messages of one author from a few workers until stopped; keeps every answer.

    Note: a refused or unanswered POST (a replica dying, the api restarting, a connection
    reset) is counted, not raised: drills judge the outcome by which ids were accepted
    (202) and whether they are stored.
    """

    def __init__(self, url: str, author: str, workers: int = 8, pause_s: float = 0.0) -> None:
        self.url, self.author, self.workers, self.pause_s = url, author, workers, pause_s
        self.accepted: list[str] = []
        self.answers: list[tuple[float, int]] = []
        """(monotonic time answered, status), status 0 when no answer came."""
        self.statuses: dict[int, int] = {}
        """How many answers of each status (one dict, updated in place, for probes)."""
        self.errors = 0
        """POSTs that got no answer (connection refused or cut)."""
        self._stopping = anyio.Event()

    async def _worker(self, http: httpx.AsyncClient) -> None:
        while not self._stopping.is_set():
            body = {"author": self.author, "text": f"m {len(self.answers)}"}
            try:
                r = await http.post("/messages", json=body)
            except httpx.TransportError:
                self.errors += 1
                self.answers.append((time.monotonic(), 0))
                await anyio.sleep(max(self.pause_s, 0.05))
                continue
            self.answers.append((time.monotonic(), r.status_code))
            self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
            if r.status_code == 202:
                self.accepted.append(r.json()["id"])
                pause = self.pause_s
            else:
                pause = max(self.pause_s, 0.02)
            if pause:
                await anyio.sleep(pause)

    def accepted_after(self, moment: float) -> int:
        """How many posts were answered 202 after `moment` (monotonic)."""
        return sum(1 for at, status in self.answers if at > moment and status == 202)

    async def until(self, accepted: int, within: float) -> None:
        """Wait until at least `accepted` messages in all were accepted."""

        async def count() -> int:
            return len(self.accepted)

        await wait_for(count, lambda n: n >= accepted, within, f"{accepted} accepted")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Poster]:
        async with (
            httpx.AsyncClient(base_url=self.url, timeout=30) as http,
            anyio.create_task_group() as tg,
        ):
            for _ in range(self.workers):
                tg.start_soon(self._worker, http)
            try:
                yield self
            finally:
                self._stopping.set()
