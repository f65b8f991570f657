"""Load shedding at the door: a POST /messages that admission refuses anyway is answered
before the framework sees it."""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from feedsvc.http.admission import Admission, Refusal
from feedsvc.http.errors import problem
from feedsvc.metrics import Metrics


class ShedPosts:
    """ASGI middleware: 429/503 with `Retry-After` for `POST /messages` while admission
    refuses every message, without routing, dependency injection or reading the body.

    Note: under overload most requests are refused, so a refusal must cost a small
    fraction of an accepted post, or the refusals alone saturate the event loop and
    every answer, 429s included, waits behind them (issue 12: 429s 15 s late). The
    answer is the one the handler gives (same status, body, header, metric). Requests
    with an `Origin` header go on to the handler when CORS is on, so the refusal
    carries the CORS headers a browser needs to read it.
    """

    def __init__(self, app: ASGIApp, admission: Admission, metrics: Metrics, *, cors: bool) -> None:
        self.app = app
        self.admission = admission
        self.metrics = metrics
        self.cors = cors
        self._answers: dict[tuple[int, str, int], tuple[bytes, bytes]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == ScopeType.HTTP
            and scope["path"] == "/messages"
            and scope["method"] == "POST"
            and (refusal := self.admission.refusal()) is not None
            and not (self.cors and any(name == b"origin" for name, _ in scope["headers"]))
        ):
            # The route the handler would have matched, for the access log's latency label.
            scope["path_template"] = "/messages"
            await self._refuse(refusal, send)
            return
        await self.app(scope, receive, send)

    async def _refuse(self, refusal: Refusal, send: Send) -> None:
        self.metrics.posts.refused.labels(str(refusal.status), refusal.reason).inc()
        key = (refusal.status, refusal.reason, refusal.retry_after_s)
        answer = self._answers.get(key)
        if answer is None:
            # The handler's own answer, rendered once per kind of refusal.
            content = problem(refusal.status, refusal.reason).content
            assert isinstance(content, bytes)
            answer = self._answers[key] = (content, str(refusal.retry_after_s).encode())
        body, retry_after = answer
        await send(
            {
                "type": "http.response.start",
                "status": refusal.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", retry_after),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
