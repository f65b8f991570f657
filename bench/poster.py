"""A paced poster: POST /messages on an absolute schedule, noting every answer and when.

One task per POST, so the rate holds whatever the latency (up to the connection pool).
`Poster.run` is a coroutine; `Poster.background` runs it on a thread of its own until told
to stop, for scenarios that break things while posts go on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

AUTHOR = "bench"
TEXT = "bench message: a short text of about a hundred characters, like most posts are today."


@dataclass(frozen=True)
class Answer:
    """One POST: when it was sent, when answered, the status and the id if accepted."""

    sent: float
    answered: float
    status: str
    id: str | None

    @property
    def latency_s(self) -> float:
        """Seconds from sending to the answer."""
        return self.answered - self.sent


@dataclass
class Poster:
    """Posts to `url` at `rate` per second; `answers` grows as they come."""

    url: str
    rate: float
    author: str = AUTHOR
    source: str | None = None
    """The local address to post from (a loopback one: another client to the proxy)."""
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def accepted(self) -> dict[str, float]:
        """Message id -> when its 202 arrived."""
        return {a.id: a.answered for a in self.answers if a.id is not None}

    def statuses(self) -> dict[str, int]:
        """How many answers of each status (or client-side error name)."""
        return dict(Counter(a.status for a in self.answers))

    def latencies_s(self, status: str | None = "202") -> list[float]:
        """The latencies of answers with `status` (None: all)."""
        return [a.latency_s for a in self.answers if status is None or a.status == status]

    async def run(self, seconds: float) -> None:
        """Post for `seconds` (or until `stop`), then wait for the answers in flight."""
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        transport = httpx.AsyncHTTPTransport(local_address=self.source, limits=limits)
        async with httpx.AsyncClient(base_url=self.url, timeout=15, transport=transport) as http:

            async def one(i: int) -> None:
                sent = time.monotonic()
                try:
                    response = await http.post(
                        "/messages", json={"author": self.author, "text": f"{TEXT} #{i}"}
                    )
                except httpx.HTTPError as exc:
                    self.answers.append(Answer(sent, time.monotonic(), type(exc).__name__, None))
                    return
                answered = time.monotonic()
                status = response.status_code
                mid = response.json()["id"] if status == 202 else None
                self.answers.append(Answer(sent, answered, str(status), mid))

            tasks: set[asyncio.Task[None]] = set()
            began = time.monotonic()
            i = 0
            while not self._stop.is_set() and time.monotonic() - began < seconds:
                await asyncio.sleep(max(0.0, began + i / self.rate - time.monotonic()))
                task = asyncio.create_task(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.gather(*tasks)

    def background(self, seconds: float = 1e9) -> Poster:
        """Start posting on a thread of its own; `stop` ends it."""
        self._thread = threading.Thread(target=asyncio.run, args=(self.run(seconds),), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop posting and wait for the answers in flight."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)


def post_paced(url: str, rate: float, seconds: float, author: str = AUTHOR) -> Poster:
    """Post at `rate` for `seconds` and return the poster with every answer."""
    poster = Poster(url, rate, author)
    asyncio.run(poster.run(seconds))
    return poster
