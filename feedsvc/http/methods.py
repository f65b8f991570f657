"""HTTP methods beyond each route's own: HEAD on every GET route, OPTIONS, and `Allow`.

Litestar 2 answers HEAD only where a handler declares it, and its automatic OPTIONS
handler lists only the methods of the first handler registered for a path
(https://github.com/litestar-org/litestar/issues/4169, fixed in Litestar 3 only). Here:

- `HeadAndAllow` serves HEAD as the GET of the same path without its body (RFC 9110
  §9.3.2: the same status and header fields), for every route, Litestar's own (`/schema`)
  too, and adds HEAD to every `Allow` that lists GET;
- `options_handlers` gives each of our paths an OPTIONS handler whose `Allow` lists every
  method of the path, read from the app's routes when asked;
- `allow_header` writes the `Allow` value the same way for OPTIONS and 405.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from litestar import Request, Response
from litestar.enums import HttpMethod, ScopeType
from litestar.handlers import HTTPRouteHandler, route
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send

_ALLOW = b"allow"


def allow_header(methods: Iterable[str]) -> str:
    """The `Allow` value of a resource with these methods: HEAD wherever GET is, sorted."""
    allowed = {method.strip().upper() for method in methods if method.strip()}
    if "GET" in allowed:
        allowed.add("HEAD")
    return ", ".join(sorted(allowed))


class HeadAndAllow:
    """ASGI middleware around the whole app: HEAD is routed as GET, its body dropped; every
    `Allow` header the app sends (Litestar's own OPTIONS answers included) lists HEAD where
    it lists GET.

    Note: a HEAD response ends as soon as its headers are sent. The server then answers
    the app's next `receive()` with `http.disconnect` (ASGI: "sent to the application if
    receive is called after a response has been sent",
    https://asgi.readthedocs.io/en/latest/specs/www.html#disconnect-receive-event), so
    the endless `/feed` stops as for a client that left, and its subscription is
    released. A route without GET answers 405 as for GET.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "HEAD":
            await self.app(scope, receive, _with_full_allow(send))
            return
        send_start = _with_full_allow(send)

        async def send_headers_only(message: Message) -> None:
            # The body messages the app still sends are dropped.
            if message["type"] == "http.response.start":
                await send_start(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


def _with_full_allow(send: Send) -> Send:
    async def send_with_full_allow(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers") or ()
            if any(name.lower() == _ALLOW for name, _ in headers):
                message = {
                    **message,
                    "headers": [
                        (name, allow_header(value.decode("latin-1").split(",")).encode())
                        if name.lower() == _ALLOW
                        else (name, value)
                        for name, value in headers
                    ],
                }
        await send(message)

    return send_with_full_allow


def options_handlers(handlers: Iterable[HTTPRouteHandler]) -> list[HTTPRouteHandler]:
    """An OPTIONS handler for each path of `handlers`; register them before the handlers.

    Note: registered first, they keep Litestar from making its own for these paths.
    """
    paths = sorted({path for handler in handlers for path in handler.paths})
    return [_options_for(path) for path in paths]


def _options_for(path: str) -> HTTPRouteHandler:
    async def options(request: Request[Any, Any, Any]) -> Response[None]:
        methods = {
            method
            for candidate in request.app.routes
            if isinstance(candidate, HTTPRoute) and candidate.path == path
            for method in candidate.methods
        }
        return Response(None, status_code=204, headers={"Allow": allow_header(methods)})

    return route(
        path,
        http_method=[HttpMethod.OPTIONS],
        include_in_schema=False,
        name=f"options:{path}",
    )(options)
