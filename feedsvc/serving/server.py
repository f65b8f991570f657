"""uvicorn serving a worker's listening socket through our acceptor, within the edge's limits."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from feedsvc.config import Settings
from feedsvc.http.errors import Answer
from feedsvc.metrics import Metrics
from feedsvc.relay.fanout import Fanout
from feedsvc.relay.stream import BUSY
from feedsvc.serving.acceptor import Acceptor, connection_cap
from feedsvc.serving.coalescing import CoalescingProtocol
from feedsvc.serving.limits import Cuts, GuardedHttp, Limits, raw, refusals
from feedsvc.serving.refusal import Refusals

log = logging.getLogger(__name__)


def uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    """How uvicorn runs the api's app; the socket and the connections are `Server`'s."""
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # The client of a request forwarded by the front door is the one it names in
        # X-Forwarded-For, believed only from these addresses.
        # https://www.uvicorn.org/settings/#http (proxy_headers, forwarded_allow_ips)
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
        lifespan="off",
        # After an answer, uvicorn's keep-alive timer is the idle limit (before the first,
        # GuardedHttp's is).
        timeout_keep_alive=math.ceil(settings.idle_timeout_s),
        # Without it uvicorn waits forever on open SSE streams at SIGTERM.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )


class Server(uvicorn.Server):
    """uvicorn serving `sock` through our `Acceptor`, which takes every pending connection
    at once, each within the edge's limits; on SIGTERM it first ends every feed stream so
    clients reconnect elsewhere."""

    def __init__(
        self,
        fanout: Fanout,
        config: uvicorn.Config,
        sock: socket.socket,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        super().__init__(config)
        self.fanout = fanout
        self.sock = sock
        self.settings = settings
        self.metrics = metrics
        self.acceptor: Acceptor | None = None
        self.cuts = Cuts()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # An empty list: uvicorn opens no server of its own (uvicorn.Server.startup).
        await super().startup(sockets=[])
        config, settings = self.config, self.settings
        limits = Limits(settings.max_head_bytes, settings.head_timeout_s, settings.idle_timeout_s)
        answers = refusals(limits)

        def protocol() -> asyncio.Protocol:
            # What uvicorn's own server builds for each connection (its httptools
            # protocol, within our limits), writing through a CoalescingTransport (one
            # send per answer, not two).
            made = GuardedHttp(
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                limits=limits,
                cuts=self.cuts,
                refusals=answers,
            )
            return CoalescingProtocol(made)

        cap = connection_cap(settings.max_connections)
        self.acceptor = Acceptor(
            self.sock,
            protocol,
            max_connections=cap,
            open_connections=lambda: len(self.server_state.connections),
            refusals=_refusals(),
        )
        self._follow(self.acceptor)
        self.acceptor.start()
        log.info(
            "api limits", extra={"max_connections": cap, "max_head_bytes": limits.max_head_bytes}
        )

    def _follow(self, acceptor: Acceptor) -> None:
        metrics, connections, cuts = self.metrics, self.metrics.connections, self.cuts
        metrics.follow(connections.open, lambda: len(self.server_state.connections))
        metrics.count(connections.refused, lambda: acceptor.refused)
        metrics.count(connections.cut.labels("head_too_large"), lambda: cuts.head_too_large)
        metrics.count(connections.cut.labels("head_timeout"), lambda: cuts.head_timeout)
        metrics.count(connections.cut.labels("idle"), lambda: cuts.idle)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting first, as uvicorn does with its own servers.
        if self.acceptor is not None:
            self.acceptor.close()
        self.sock.close()
        await super().shutdown(sockets=[])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # Runs in the signal handler, between two steps of the event loop's thread;
        # closing only sets flags and wakes waiters.
        self.fanout.close()


def _refusals() -> Refusals:
    """503 with Retry-After; to a feed request, the feed's own answer when it is full."""
    busy = Answer.problem(503, "this api worker has all the connections it can take", None, 1)
    hint = b"".join(BUSY)
    feed = b"".join(
        (
            STATUS_LINE[200],
            b"content-type: text/event-stream\r\ncache-control: no-cache\r\n",
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(hint),
            hint,
        )
    )
    return Refusals(busy=raw(busy), feed=feed)
