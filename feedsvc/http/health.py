"""Health and metrics: `/health/live`, `/health/ready`, `/metrics`.

Ready means "can serve" (ARCHITECTURE.md#readiness): posts need Kafka (the database is
behind the writer's backlog) and the feed needs its relay caught up on Kafka. The database
answers reads (`GET /messages`, the feed's history) and Idempotency-Key claims; its outage
is reported as `degraded`, still 200, so that a proxy that routes by readiness keeps the
api in rotation and posts and the live feed go on.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import anyio
from litestar import Response, get
from litestar.di import NamedDependency

from feedsvc.http.admission import Admission
from feedsvc.http.contract import READY_RESPONSES, ReadyOperation
from feedsvc.metrics import Metrics
from feedsvc.relay.reader import CommittedReader

log = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0
"""How often the database is pinged: a probe or a scrape sees its state at most this old."""
CHECK_TIMEOUT_S = 2.0
"""A ping not answered by then counts as unreachable."""


class Pinger(Protocol):
    """What the watch asks of the database (`store.MessageStore` is one)."""

    async def ping(self) -> None:
        """Raise unless the database answers a query."""
        ...


class DatabaseWatch:
    """Whether the database answered its latest ping, kept by `run` in the background.

    Note: probes read the last answer instead of pinging themselves, so a readiness probe
    never waits on a database that does not answer, and costs it nothing.
    """

    def __init__(self, database: Pinger) -> None:
        self._database = database
        self.reachable = True
        """False from the first unanswered ping until the next answered one."""

    async def run(self, every_s: float = CHECK_EVERY_S) -> None:
        """Ping every `every_s` until cancelled; a change is logged once."""
        while True:
            try:
                with anyio.fail_after(CHECK_TIMEOUT_S):
                    await self._database.ping()
                reachable, error = True, ""
            except Exception as exc:  # whatever it is, the database did not answer
                reachable, error = False, repr(exc)
            if reachable != self.reachable:
                if reachable:
                    log.info("database reachable again")
                else:
                    log.warning("database unreachable: serving degraded", extra={"error": error})
            self.reachable = reachable
            await anyio.sleep(every_s)


@get("/health/live")
async def live() -> dict[str, str]:
    """200 while the process is serving requests at all."""
    return {"status": "live"}


@get("/health/ready", responses=READY_RESPONSES, operation_class=ReadyOperation)
async def ready(
    database: NamedDependency[DatabaseWatch],
    admission: NamedDependency[Admission],
    reader: NamedDependency[CommittedReader],
) -> Response[dict[str, object]]:
    """200 while posts and the feed can be served (Kafka answered lately, the feed caught
    up), `degraded` when the database does not answer; 503 otherwise."""
    fresh = time.monotonic() - admission.last_refresh < 10
    status, body = readiness(
        database=database.reachable,
        kafka=admission.kafka_reachable and fresh,
        feed=reader.ready,
    )
    return Response(body, status_code=status)


def readiness(*, database: bool, kafka: bool, feed: bool) -> tuple[int, dict[str, object]]:
    """The answer of `/health/ready`: Kafka and the feed decide; the database only degrades."""
    body: dict[str, object] = {
        "database": "ok" if database else "unreachable",
        "kafka": "ok" if kafka else "unavailable",
        "feed": "ok" if feed else "catching up",
    }
    if not (kafka and feed):
        body["status"] = "not ready"
        return 503, body
    body["status"] = "ready" if database else "degraded"
    return 200, body


@get("/metrics", media_type="text/plain; version=0.0.4")
async def render_metrics(metrics: Metrics) -> str:
    """Prometheus text exposition (every api worker's, summed, when there are several)."""
    return metrics.render().decode()
