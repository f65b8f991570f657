"""Access logs and request durations: one JSON line and one histogram sample per request.

A `/feed` stream is one request: it is logged once, when the connection ends, with the
whole time it was open; its events are not logged, and it is not in the histogram
(`HttpMetrics.observe`): an endless stream is no latency.
"""

from __future__ import annotations

import logging
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from feedsvc.http.requestid import request_id
from feedsvc.metrics.families import HttpMetrics

log = logging.getLogger("feedsvc.access")

_LOCATION = b"location"


class AccessLog:
    """ASGI middleware around the whole app, so 404s, 405s and CORS preflights are logged too.

    Note: the line carries method, path (no query string: it may hold cursors and ids of
    no use here), status (500 when the app failed before answering, 0 when the client
    left first), `duration_ms`, `client` (the address the front door names, see
    FEED_TRUSTED_PROXIES), and `message_id` when the answer names one in its
    `Location` header (a 202 to `POST /messages`). Cheap on the hot POST path: no
    regex, no encoding beyond the log line itself. With `metrics`, each request's
    duration is also recorded under its route template (Litestar's `path_template`;
    "unmatched" when no route matched, so ids in paths never become label values).
    """

    def __init__(self, app: ASGIApp, metrics: HttpMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        logged = log.isEnabledFor(logging.INFO)
        if scope["type"] != ScopeType.HTTP or not (logged or self.metrics):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        location: bytes | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status, location
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == _LOCATION:
                        location = value
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, send_and_note)
        except BaseException:
            failed = True
            raise
        finally:
            seconds = time.perf_counter() - started
            status = 500 if failed and status == 0 else status
            if self.metrics is not None:
                route = scope.get("path_template", "unmatched")
                self.metrics.observe(scope["method"], route, status, seconds)
            if logged:
                fields: dict[str, object] = {
                    "method": scope.get("method"),
                    "path": scope["path"],
                    "status": status,
                    "client": _client(scope),
                    "duration_ms": round(seconds * 1000, 1),
                }
                if location is not None:
                    fields["message_id"] = location.rpartition(b"/")[2].decode("latin-1")
                if (rid := request_id(scope)) is not None:
                    fields["request_id"] = rid
                log.info("request", extra=fields)


def _client(scope: Scope) -> str | None:
    """The client's address: uvicorn's, after X-Forwarded-For from a trusted proxy."""
    client = scope.get("client")
    return client[0] if client else None
