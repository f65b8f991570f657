"""Request ids: `X-Request-ID` taken from the client or made, returned, logged, and sent on.

The id is in the answer's `X-Request-ID` header, in the access log line (`request_id`), in
every JSON error body (`"request_id"`), and, for a post, in the Kafka record's
`request-id` header, which the writer logs with the message's id: a post's lines join
end to end (docs/api.md#request-ids).
"""

from __future__ import annotations

import os
import re
from typing import Any, cast

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_GIVEN = re.compile(rb"\A[A-Za-z0-9._:-]{1,128}\Z")
"""An id a client may choose: short, and nothing that could forge a log field."""
_STATE_KEY = "request_id"
_CONTENT_LENGTH = b"content-length"
_CONTENT_TYPE = b"content-type"


def request_id(scope: Scope) -> str | None:
    """The id `RequestIds` gave this request (None outside it: a unit test's app)."""
    state = scope.get("state")
    return None if state is None else state.get(_STATE_KEY)


class RequestIds:
    """ASGI middleware around the whole app: each HTTP request gets its id.

    Note: a valid `X-Request-ID` from the client is kept (so a proxy's id carries
    through); an absent or invalid one is replaced by a random one. An error answer
    (status >= 400, JSON, sent in one piece) gets `"request_id"` added to its body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        given = next((v for n, v in scope["headers"] if n.lower() == HEADER), None)
        rid = given.decode() if given is not None and _GIVEN.match(given) else os.urandom(16).hex()
        scope.setdefault("state", {})[_STATE_KEY] = rid
        header = (HEADER, rid.encode())
        held: dict[str, Any] | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal held
            out: dict[str, Any] = dict(message)
            if out["type"] == "http.response.start":
                out["headers"] = [*out.get("headers", ()), header]
                if out["status"] >= 400 and _is_json(out["headers"]):
                    held = out  # the body may need the id, and a new length
                    return
            elif held is not None and out["type"] == "http.response.body":
                start, held = held, None
                body = out.get("body", b"")
                if not out.get("more_body", False) and body.endswith(b"}"):
                    out["body"] = body = with_request_id(body, rid)
                    start["headers"] = [
                        (n, str(len(body)).encode() if n.lower() == _CONTENT_LENGTH else v)
                        for n, v in start["headers"]
                    ]
                await send(cast(Message, start))
            await send(cast(Message, out))

        await self.app(scope, receive, send_with_id)


def with_request_id(body: bytes, rid: str) -> bytes:
    """A JSON object's bytes with `"request_id": rid` as its last member."""
    inner = body[:-1].rstrip()
    separator = b"" if inner.endswith(b"{") else b","
    return inner + separator + b'"request_id":' + msgspec.json.encode(rid) + b"}"


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(n.lower() == _CONTENT_TYPE and b"json" in v.lower() for n, v in headers)
