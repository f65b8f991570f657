"""`GET /feed`: the latest messages, then every new one, live, over Server-Sent Events."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from litestar import Request, get
from litestar.params import Parameter
from litestar.response import Stream
from litestar.types import ASGIApp, Receive, Scope, Send

from feedsvc.config import Settings
from feedsvc.messages import Message
from feedsvc.metrics import Metrics
from feedsvc.relay.fanout import Ahead, Fanout, ReplayFrom, Reset, Subscription
from feedsvc.relay.frames import PING, message_frame, reset_frame, resume_frame, retry_frame
from feedsvc.relay.reader import CommittedReader
from feedsvc.store import MessageStore

log = logging.getLogger(__name__)

RETRY_MS = 2000
"""How long a browser waits before reconnecting after the stream ends."""
BUSY_RETRY_MS = 10_000
"""The reconnect delay we ask for when this process has no room for another stream."""
_CUT = "feedsvc.feed.cut"

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx and similar proxies buffer responses unless told not to.
    "X-Accel-Buffering": "no",
}


def lag_cutoff(app: ASGIApp) -> ASGIApp:
    """Middleware of `/feed`: lets a stream be cut while it is stuck writing to a client.

    Note: a client that stops reading leaves our write blocked on its full socket;
    the fanout detects it is lagging and calls `on_lag`, which cancels the whole
    request here, so uvicorn drops the connection. The client resumes from its
    Last-Event-ID like after any disconnect.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope() as cut:
            scope.setdefault("state", {})[_CUT] = cut
            await app(scope, receive, send)

    return middleware


def _last_event_id(request: Request[Any, Any, Any], query_value: str | None) -> str | None:
    # The header wins: a browser reconnecting sends its newest id there, while the URL
    # still carries the one the page started with.
    return request.headers.get("last-event-id") or query_value or None


@get("/feed", middleware=[lag_cutoff], media_type="text/event-stream")
async def feed(
    request: Request[Any, Any, Any],
    reader: CommittedReader,
    store: MessageStore,
    settings: Settings,
    metrics: Metrics,
    limit: Annotated[int | None, Parameter(ge=0, le=1000)] = None,
    last_event_id: Annotated[str | None, Parameter(query="last_event_id")] = None,
) -> Stream:
    """History (`limit`, default 50) then live events; resumes after `Last-Event-ID`.

    Note: never answers 429/503 (a browser's EventSource gives up for good on those):
    when this process is full or not ready it answers 200 with a `retry:` hint and ends.
    """
    fanout = reader.fanout
    # Starting (not caught up), stopping, or full: a retry hint, never an error status.
    if (
        fanout is None
        or not reader.ready
        or fanout.closed
        or fanout.subscribers >= settings.max_subscribers
    ):
        metrics.inc("feedsvc_feed_turned_away_total")
        return Stream(
            [retry_frame(BUSY_RETRY_MS), b": busy, reconnect later\n\n"], headers=SSE_HEADERS
        )
    cut: anyio.CancelScope = request.scope["state"][_CUT]
    events = _events(
        fanout,
        reader,
        store,
        settings,
        _last_event_id(request, last_event_id),
        settings.history_limit if limit is None else limit,
        cut,
    )
    return Stream(events, headers=SSE_HEADERS)


async def _events(
    fanout: Fanout,
    reader: CommittedReader,
    store: MessageStore,
    settings: Settings,
    last_event_id: str | None,
    limit: int,
    cut: anyio.CancelScope,
) -> AsyncIterator[bytes]:
    yield retry_frame(RETRY_MS)
    answer = fanout.subscribe(last_event_id)
    if isinstance(answer, Ahead):
        # A position another replica has served but this one has not read yet.
        with anyio.move_on_after(5):
            await fanout.wait_past(answer.offset)
        answer = fanout.subscribe(last_event_id)
        if isinstance(answer, Ahead):
            answer = Reset("Last-Event-ID is ahead of this feed: the topic was recreated")
    if isinstance(answer, ReplayFrom):
        sub: Subscription | None = None
        async for item in reader.replay(answer):
            if isinstance(item, bytes):
                yield item
            elif isinstance(item, Reset):
                answer = item
            else:
                sub = item
        if sub is not None:
            answer = sub
    if isinstance(answer, Reset):
        log.info("feed reset", extra={"reason": answer.reason, "last_event_id": last_event_id})
        yield reset_frame(fanout.position, answer.reason)
        answer = fanout.subscribe(None)
        assert isinstance(answer, Subscription)
        last_event_id = None
    if not isinstance(answer, Subscription):
        raise AssertionError(f"unexpected subscription answer {answer!r}")
    sub = answer
    sub.on_lag = cut.cancel
    try:
        if last_event_id is None:
            # DESIGN §3 handoff: subscribed first, now the history, then the live
            # events minus those the history already had.
            history = await store.page(limit) if limit else []
            if history:
                sub.exclude({m.id for m in history})
                yield b"".join(_history_frames(sub.last_id, history))
        async for frames in _with_heartbeats(sub, settings.heartbeat_s):
            yield frames
        if fanout.closed:
            yield resume_frame(sub.last_id, "the server is shutting down; reconnect to resume")
    finally:
        sub.close()


def _history_frames(position: str, newest_first: list[Message]) -> list[bytes]:
    # History carries the live position as its id: resuming from any of it continues
    # with what was committed after the history was read.
    return [message_frame(position, m) for m in reversed(newest_first)]


async def _with_heartbeats(sub: Subscription, every_s: float) -> AsyncIterator[bytes]:
    while True:
        frames = await sub.next_frames_within(every_s)
        if frames is None:
            yield PING
            continue
        if not frames:
            return
        yield b"".join(frames)
