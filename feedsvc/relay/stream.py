"""One client's feed stream: a position (or none) and a history loader in, SSE frames out.

The resume protocol lives here, whatever serves the bytes (ARCHITECTURE.md#feed-position):

- No position: subscribe first (position P), then read the latest N messages and the
  read's snapshot time T in one consistent read, send them oldest first with the id
  `P~T`, then every live event after P, except rows with `updated` <= T: those were
  committed before the read, so they are in the history, or older than the latest N
  ("older history", which `GET /messages` pages through). Ids keep `~T` until a resolved
  timestamp >= T has passed (no such row can follow it).
- A position: resume after it, from the ring or from Kafka (`Replay`), filtered by the
  position's T if it carries one, so a resume on any replica sends exactly what the
  first connection would have sent next.
- A position that cannot be served: an explicit `reset` with the reason, then as above.

Why no row with `updated` > T can be at an offset <= P (so none is lost): P is taken
before the history read starts. A row at an offset <= P was emitted by the changefeed,
and so committed, before that; the history read is a consistent snapshot at T that
began after it, so it sees the row (CockroachDB: the transaction's reads are valid at
its commit timestamp T, and a value committed before the transaction began is never in
its future -- uncertainty restarts push T above it; the stand-in: `POSTGRES_SNAPSHOT`),
and T is exact: a row it sees has `updated` <= T. Rows after P are sent iff
`updated` > T, i.e. iff the read did not see them. So history + live is every message
committed after the history's oldest, each once, in changefeed order after the history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from feedsvc.messages import Message
from feedsvc.relay.answers import Ahead, ReplayFrom, Reset
from feedsvc.relay.changefeed import hlc_value
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.frames import PING, message_frame, reset_frame, resume_frame, retry_frame
from feedsvc.relay.replay import ReplaysBusy
from feedsvc.relay.subscription import Subscription

log = logging.getLogger(__name__)

RETRY_MS = 2000
"""How long a browser waits before reconnecting after the stream ends."""
BUSY_RETRY_MS = 10_000
"""The reconnect delay we ask for when this process has no room for another stream."""
BUSY = [retry_frame(BUSY_RETRY_MS), b": busy, reconnect later\n\n"]
"""The whole answer to a stream this process cannot serve now (never an error status)."""
AHEAD_WAIT_S = 5.0
"""How long a position this replica has not read yet may take to arrive."""

History = Callable[[int], Awaitable[tuple[list[Message], str]]]
"""Reads the latest N messages (newest first) and the read's snapshot time (an HLC string)."""
Replayer = Callable[[Fanout, ReplayFrom], AsyncIterator[bytes | Reset | Subscription]]
"""Serves a position older than the ring from Kafka (`CommittedReader.replay`)."""
Delivered = Callable[[float], None]
"""Told the seconds from a sampled live event's read from Kafka to its frame written."""
Notice = Callable[[str, str], None]
"""Told each `reset` or `resume` event sent: its kind and its reason."""


class FeedStream:
    """The frames of one feed client, from `frames()`; `close()` releases its subscription.

    Note: `on_lag` is handed to the live subscription (`Subscription.on_lag`);
    `on_delivered` and `on_notice`, when given, are for metrics.
    """

    def __init__(
        self,
        fanout: Fanout,
        replay: Replayer,
        history: History,
        *,
        last_event_id: str | None,
        limit: int,
        heartbeat_s: float,
        on_lag: Callable[[], None] | None = None,
        on_delivered: Delivered | None = None,
        on_notice: Notice | None = None,
    ) -> None:
        self.fanout = fanout
        self._replay = replay
        self._history = history
        self.last_event_id = last_event_id
        self.limit = limit
        self.heartbeat_s = heartbeat_s
        self.on_lag = on_lag
        self.on_delivered = on_delivered
        self.on_notice = on_notice
        self.subscription: Subscription | None = None
        self._closed = False

    def close(self) -> None:
        """Leave the fanout now (the connection closed); idempotent."""
        self._closed = True
        if self.subscription is not None:
            self.subscription.close()

    async def frames(self) -> AsyncIterator[bytes]:
        """The stream: a `retry:` hint, then history and live events, until it ends."""
        try:
            yield retry_frame(RETRY_MS)
            fanout = self.fanout
            fresh = self.last_event_id is None
            answer = await self._subscribe(self.last_event_id)
            if isinstance(answer, ReplayFrom):
                try:
                    replayed = self._replay(fanout, answer)
                    answer = Reset("the replay ended before reaching the live feed")
                    async for item in replayed:
                        if isinstance(item, bytes):
                            yield item
                        else:
                            answer = item
                except ReplaysBusy:
                    for frame in BUSY:
                        yield frame
                    return
            if answer is None:
                for frame in BUSY:
                    yield frame
                return
            if isinstance(answer, Reset):
                yield self._reset(answer.reason)
                fresh = True
                start = fanout.subscribe(None)
            else:
                start = answer
            assert isinstance(start, Subscription), start
            while True:
                sub = self._attach(start)
                if fresh and self.limit and (history := await self._history_frames(sub)):
                    yield history
                async for frames in _with_heartbeats(sub, self.heartbeat_s, self.on_delivered):
                    yield frames
                if sub.lagging:
                    self._notice("resume", "the client fell behind")
                if sub.reset_reason is None:
                    break
                # The topic lost our position (`Fanout.restart`): start this client over.
                with anyio.move_on_after(AHEAD_WAIT_S * 2):
                    while not fanout.ready and not fanout.closed:
                        await fanout.wait_past(fanout.head)
                if not fanout.ready or fanout.closed:
                    self._notice("reset", sub.reset_reason)
                    yield reset_frame("", sub.reset_reason)  # an empty id: start afresh
                    for frame in BUSY:
                        yield frame
                    return
                yield self._reset(sub.reset_reason)
                again = fanout.subscribe(None)
                assert isinstance(again, Subscription), again
                start, fresh = again, True
            if fanout.closed and not sub.lagging:
                self._notice("resume", "the server is shutting down")
                yield resume_frame(sub.last_id, "the server is shutting down; reconnect to resume")
        finally:
            self.close()

    async def _subscribe(self, last: str | None) -> Subscription | ReplayFrom | Reset | None:
        """The fanout's answer, after waiting for a position not read yet; None: busy."""
        fanout = self.fanout
        answer = fanout.subscribe(last)
        if isinstance(answer, Ahead):
            if not fanout.ready:
                return None  # restarting: come back later
            # A position another replica has served but this one has not read yet.
            with anyio.move_on_after(AHEAD_WAIT_S):
                await fanout.wait_past(answer.offset)
            answer = fanout.subscribe(last)
            if isinstance(answer, Ahead):
                if not fanout.ready:
                    return None
                return Reset("unknown position: Last-Event-ID is ahead of this feed")
        return answer

    def _attach(self, sub: Subscription) -> Subscription:
        self.subscription = sub
        sub.on_lag = self.on_lag
        if self._closed:
            sub.close()
        return sub

    def _reset(self, reason: str) -> bytes:
        log.info("feed reset", extra={"reason": reason, "last_event_id": self.last_event_id})
        self._notice("reset", reason)
        return reset_frame(str(self.fanout.position), reason)

    async def _history_frames(self, sub: Subscription) -> bytes:
        messages, snapshot = await self._history(self.limit)
        history_id = sub.start_snapshot(hlc_value(snapshot))
        return b"".join(message_frame(history_id, m) for m in reversed(messages))

    def _notice(self, kind: str, reason: str) -> None:
        if self.on_notice is not None:
            self.on_notice(kind, reason)


async def _with_heartbeats(
    sub: Subscription, every_s: float, delivered: Delivered | None = None
) -> AsyncIterator[bytes]:
    while True:
        frames = await sub.next_frames_within(every_s)
        if frames is None:
            yield PING
            continue
        if not frames:
            return
        sampled, sub.sampled = sub.sampled, ()
        yield b"".join(frames)
        # Resumed: the server took the chunk (uvicorn's send returned), so it is written.
        if delivered is not None and sampled:
            now = time.monotonic()
            for read_at in sampled:
                delivered(now - read_at)
