"""`POST /messages` at the door: the hot path answered in plain ASGI, before the framework.

Why: a post is the one request that comes by the thousand per second, and under a flood
most posts are refused. Litestar's per-request work (routing, the `Request` object,
dependency resolution, the response object) was about 30 % of an accepted post's CPU in
the api (py-spy, issue 12), and a refusal that costs as much as a post saturates the event
loop, so that every answer, 429s included, waits behind the others (429s seen 15 s late).
What the answer is stays in one place, `http.submit` (`screen`, `accept`): the Litestar
handler there gives the same answers, documents the operation, and serves the posts this
door lets through.
"""

from __future__ import annotations

import asyncio
import logging

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import Counter

from feedsvc.http.admission import Refusal
from feedsvc.http.errors import Answer
from feedsvc.http.requestid import request_id
from feedsvc.http.submit import TOO_LARGE, Submitter, accept, screen
from feedsvc.messages import MAX_BODY_BYTES

log = logging.getLogger(__name__)

_CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"
_IDEMPOTENCY_KEY = b"idempotency-key"
_ORIGIN = b"origin"
_JSON = (b"content-type", b"application/json")
_INTERNAL = Answer.problem(500, "internal error; it has been logged")


class PostsAtTheDoor:
    """ASGI middleware: answers `POST /messages` itself, as the handler would.

    Note: a post that admission refuses anyway (in-flight limit, backlog, Kafka down)
    gets its 429/503 before its body is read, from answers rendered once. Requests with
    an `Origin` header go on to the handler when CORS is on, so that every answer to
    them carries the CORS headers a browser needs to read it. Each answer is counted
    and logged as the handler's is (`path_template` is set for the access log).
    """

    def __init__(self, app: ASGIApp, submitter: Submitter, *, cors: bool) -> None:
        self.app = app
        self.submitter = submitter
        self.cors = cors
        self._refusals: dict[tuple[int, str, int], tuple[Answer, Counter]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == ScopeType.HTTP
            and scope["path"] == "/messages"
            and scope["method"] == "POST"
        ):
            await self.app(scope, receive, send)
            return
        content_type = key = length = None
        for raw_name, value in scope["headers"]:
            name = raw_name.lower()
            if name == _CONTENT_TYPE:
                content_type = content_type or value.decode("latin-1")
            elif name == _IDEMPOTENCY_KEY:
                key = key or value.decode("latin-1")
            elif name == _CONTENT_LENGTH:
                length = value
            elif name == _ORIGIN and self.cors:
                await self.app(scope, receive, send)
                return
        # The route the handler would have matched, for the access log's latency label.
        scope["path_template"] = "/messages"
        if (refusal := self.submitter.admission.refusal()) is not None:
            await _write(send, self._refused(refusal))
            return
        try:
            answer = await self._answer(receive, content_type or "", key, length, request_id(scope))
        except Exception:
            log.exception("unhandled error", extra={"method": "POST", "path": "/messages"})
            answer = _INTERNAL
        if answer is not None:
            await _write(send, answer)

    async def _answer(
        self,
        receive: Receive,
        content_type: str,
        key: str | None,
        length: bytes | None,
        rid: str | None,
    ) -> Answer | None:
        """The answer; None when the client left before sending the whole body."""
        deadline = self.submitter.deadline()
        body_deadline = asyncio.get_running_loop().time() + self.submitter.body_timeout_s
        screened = screen(content_type, key)
        if screened is not None:
            return screened
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return TOO_LARGE
        try:
            async with asyncio.timeout_at(body_deadline):
                body = await _read_body(receive, MAX_BODY_BYTES)
        except TimeoutError:
            return self.submitter.late_body()
        except _BodyTooLarge:
            return TOO_LARGE
        except _ClientLeft:
            return None
        return await accept(self.submitter, body, key, deadline, rid)

    def _refused(self, refusal: Refusal) -> Answer:
        # The answer and its counter, looked up once per kind of refusal.
        kind = (refusal.status, refusal.reason, refusal.retry_after_s)
        known = self._refusals.get(kind)
        if known is None:
            known = self._refusals[kind] = (
                Answer.problem(refusal.status, refusal.reason, retry_after_s=refusal.retry_after_s),
                self.submitter.posts.refused.labels(str(refusal.status), refusal.reason),
            )
        answer, counter = known
        counter.inc()
        return answer


class _BodyTooLarge(Exception):
    """The body went past the limit while it was read."""


class _ClientLeft(Exception):
    """The client disconnected before it sent the whole body."""


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request's body, up to `limit` bytes.

    Raises: `_BodyTooLarge` past `limit` bytes; `_ClientLeft` when the client left.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientLeft  # http.disconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _write(send: Send, answer: Answer) -> None:
    headers = [
        _JSON,
        (b"content-length", str(len(answer.body)).encode()),
        *((name.lower().encode(), value.encode("latin-1")) for name, value in answer.headers),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})
