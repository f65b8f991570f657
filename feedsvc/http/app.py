"""The api's Litestar application, wired from collaborators its caller opened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.di import Provide

from feedsvc.config import Settings
from feedsvc.http import contract, feed, health, methods, pages, reads, submit
from feedsvc.http.access import AccessLog
from feedsvc.http.admission import Admission
from feedsvc.http.door import PostsAtTheDoor
from feedsvc.http.errors import exception_handlers
from feedsvc.http.health import DatabaseWatch
from feedsvc.http.requestid import RequestIds
from feedsvc.http.submit import Submitter
from feedsvc.metrics import Metrics
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.reader import CommittedReader
from feedsvc.store import MessageStore
from feedsvc.tracing import OFF, Tracing


@dataclass(frozen=True)
class ApiParts:
    """Everything the handlers use; opened and closed by the process's composition root."""

    settings: Settings
    store: MessageStore
    database: DatabaseWatch
    submitter: Submitter
    admission: Admission
    metrics: Metrics
    reader: CommittedReader
    fanout: Fanout


def _provide(value: Any) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


def create_app(parts: ApiParts, tracing: Tracing = OFF) -> Litestar:
    """The HTTP api over already-open resources; it opens nothing itself.

    Note: with `tracing` on, each request gets a server span (docs/tracing.md).
    """
    origins = parts.settings.cors_origin_list
    handlers = [
        pages.index,
        pages.favicon,
        submit.post_message,
        feed.feed,
        reads.list_messages,
        reads.get_message,
        health.live,
        health.ready,
        health.render_metrics,
    ]
    app = Litestar(
        # Our OPTIONS handlers first, so that Litestar makes none of its own for these paths.
        route_handlers=[*methods.options_handlers(handlers), *handlers, *pages.static_routers()],
        dependencies={
            "store": _provide(parts.store),
            "database": _provide(parts.database),
            "submitter": _provide(parts.submitter),
            "admission": _provide(parts.admission),
            "metrics": _provide(parts.metrics),
            "settings": _provide(parts.settings),
            "reader": _provide(parts.reader),
            "fanout": _provide(parts.fanout),
        },
        exception_handlers=exception_handlers(),
        openapi_config=contract.openapi_config(render_plugins=[pages.schema_ui()]),
        # Litestar answers preflights and adds the CORS headers for allowed origins only:
        # https://docs.litestar.dev/2/usage/middleware/builtin-middleware.html#cors
        cors_config=CORSConfig(
            allow_origins=origins, expose_headers=["Location", "Retry-After", "X-Request-ID"]
        )
        if origins
        else None,
        debug=False,
        # Logging is configured once per process by feedsvc.logs, not by the framework.
        logging_config=None,
    )
    # Around Litestar's whole handler (its exception and CORS layers included), so requests
    # no route matches are logged too; the `middleware=` option wraps matched routes only.
    # HEAD inside the access log, so a HEAD is logged as HEAD; posts skip the framework,
    # but not the access log (http/door.py).
    heads = methods.HeadAndAllow(app.asgi_handler)
    door = PostsAtTheDoor(heads, parts.submitter, cors=bool(origins))
    # Outermost: the access log line and every answer carry the request's id; the server
    # span inside it, so that the span has the id too.
    app.asgi_handler = RequestIds(tracing.around_http(AccessLog(door, parts.metrics.http)))
    return app
