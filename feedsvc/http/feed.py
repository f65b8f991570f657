"""`GET /feed`: the latest messages, then every new one, live, over Server-Sent Events.

The protocol (history, live, resume, reset) is `feedsvc.relay.stream`; this module keeps
the HTTP side: query parameters, the busy answer, headers, and the connection's lifetime.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import anyio
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream
from litestar.types import ASGIApp, Receive, Scope, Send

from feedsvc.config import Settings
from feedsvc.http import contract
from feedsvc.metrics import Metrics
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.reader import CommittedReader
from feedsvc.relay.stream import BUSY, FeedStream
from feedsvc.store import MessageStore

LAG_GRACE_S = 10.0
"""How long a client cut for lagging has to take its pending write and the `resume` frame
before its connection is dropped without it. The pending write returns once the server's
write buffer (64 KiB in uvloop) drains to its low-water mark (16 KiB): seconds even for a
slow reader; only a socket that takes nothing at all waits the whole time."""
_LIFETIME = "feedsvc.feed.lifetime"

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx and similar proxies buffer responses unless told not to.
    "X-Accel-Buffering": "no",
}


class _Lifetime:
    """What ends with the connection: the stream's subscription, and the lag cut."""

    def __init__(self, cut: anyio.CancelScope) -> None:
        self.cut = cut
        self.stream: FeedStream | None = None
        self._timer: asyncio.TimerHandle | None = None

    def on_lag(self) -> None:
        # Called when the fanout finds the client lagging, maybe while our write to it is
        # blocked on its full socket. If that write completes soon, the stream sends
        # `resume` and ends by itself; if not, the socket is stuck: drop the connection.
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LAG_GRACE_S, self.cut.cancel)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.stream is not None:
            self.stream.close()


def feed_lifetime(app: ASGIApp) -> ASGIApp:
    """Middleware of `/feed`: ties the stream's subscription to the connection.

    Note: the subscription is released as soon as the response ends for any reason
    (the client disconnected: Litestar cancels the stream on `http.disconnect`; the
    stream ended; the lag cut), not when the stream's generator is garbage-collected.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope() as cut:
            lifetime = _Lifetime(cut)
            scope.setdefault("state", {})[_LIFETIME] = lifetime
            try:
                await app(scope, receive, send)
            finally:
                lifetime.close()

    return middleware


def _last_event_id(request: Request[Any, Any, Any], query_value: str | None) -> str | None:
    # The header wins: a browser reconnecting sends its newest id there, while the URL
    # still carries the one the page started with.
    return request.headers.get("last-event-id") or query_value or None


@get(
    "/feed",
    middleware=[feed_lifetime],
    media_type="text/event-stream",
    responses=contract.FEED_RESPONSES,
    operation_class=contract.FeedOperation,
)
async def feed(
    request: Request[Any, Any, Any],
    reader: NamedDependency[CommittedReader],
    fanout: NamedDependency[Fanout],
    store: NamedDependency[MessageStore],
    settings: NamedDependency[Settings],
    metrics: NamedDependency[Metrics],
    limit: Annotated[int | None, QueryParameter(ge=0, le=contract.MAX_LIMIT)] = None,
    last_event_id: FromQuery[str | None] = None,
) -> Stream:
    """History (`limit`, default 50) then live events; resumes after `Last-Event-ID`.

    Note: never answers 429/503 (a browser's EventSource gives up for good on those):
    when this process is full or not ready it answers 200 with a `retry:` hint and ends.
    A malformed query (`limit` not 0-1000) is the one error, 400 before any stream: the
    same URL would never work, so an EventSource is better stopped than retrying forever.
    """
    # Starting (not caught up), stopping, or full: a retry hint, never an error status.
    if not fanout.ready or fanout.closed or fanout.subscribers >= settings.max_subscribers:
        metrics.feed.turned_away.inc()
        return Stream(BUSY, headers=SSE_HEADERS)
    lifetime: _Lifetime = request.scope["state"][_LIFETIME]
    stream = FeedStream(
        fanout,
        reader.replay,
        store.history,
        last_event_id=_last_event_id(request, last_event_id),
        limit=settings.history_limit if limit is None else limit,
        heartbeat_s=settings.heartbeat_s,
        on_lag=lifetime.on_lag,
        on_delivered=metrics.feed.delivery.observe,
        on_notice=metrics.feed.notice,
    )
    metrics.feed.streams.inc()
    lifetime.stream = stream
    return Stream(stream.frames(), headers=SSE_HEADERS)
