"""Health and metrics: `/health/live`, `/health/ready`, `/metrics`."""

from __future__ import annotations

import time

import anyio
from litestar import Response, get

from feedsvc.http.admission import Admission
from feedsvc.http.contract import READY_RESPONSES, ReadyOperation
from feedsvc.metrics import Metrics
from feedsvc.relay.reader import CommittedReader
from feedsvc.store import MessageStore


@get("/health/live")
async def live() -> dict[str, str]:
    """200 while the process is serving requests at all."""
    return {"status": "live"}


@get("/health/ready", responses=READY_RESPONSES, operation_class=ReadyOperation)
async def ready(
    store: MessageStore, admission: Admission, reader: CommittedReader
) -> Response[dict[str, object]]:
    """200 when the database answers, Kafka answered lately and the feed has caught up."""
    checks: dict[str, object] = {}
    try:
        with anyio.fail_after(2):
            await store.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    fresh = time.monotonic() - admission.last_refresh < 10
    checks["kafka"] = "ok" if admission.kafka_reachable and fresh else "unavailable"
    checks["feed"] = "ok" if reader.ready else "catching up"
    ok = all(v == "ok" for v in checks.values())
    checks["status"] = "ready" if ok else "not ready"
    return Response(checks, status_code=200 if ok else 503)


@get("/metrics", media_type="text/plain; version=0.0.4")
async def render_metrics(metrics: Metrics) -> str:
    """Prometheus text exposition (every api worker's, summed, when there are several)."""
    return metrics.render().decode()
