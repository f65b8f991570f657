"""Readiness on a real stack: a database outage degrades the api, never takes it out.

Guarantee: ARCHITECTURE.md#readiness.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack import Stack
from tests.support import native_only, stored_ids, wait_for


def _gauge(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


@pytest.mark.slow
@native_only  # stops the database
async def test_a_database_outage_is_degraded_and_posts_go_on(
    make_stack: Callable[..., Stack],
) -> None:
    """With PostgreSQL stopped, `/health/ready` answers 200 `degraded` naming the database,
    the gauge reads 0 and a post is accepted; once it is back, `ready` and 1 again."""
    stack = make_stack()
    author = "h_" + uuid.uuid4().hex[:20]
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:

        async def ready() -> httpx.Response:
            return await http.get("/health/ready")

        stack.postgres.stop()
        try:
            down = await wait_for(ready, lambda r: r.json()["database"] != "ok", 30, "seen down")
            assert down.status_code == 200, down.text
            assert down.json()["status"] == "degraded"
            assert down.json()["database"] == "unreachable"
            metrics = await http.get("/metrics")
            assert _gauge(metrics.text, "feedsvc_database_reachable") == 0
            posted = await http.post("/messages", json={"author": author, "text": "during"})
            assert posted.status_code == 202, posted.text
        finally:
            stack.postgres.start()
        up = await wait_for(ready, lambda r: r.json()["status"] == "ready", 60, "ready again")
        assert up.status_code == 200
        metrics = await http.get("/metrics")
        assert _gauge(metrics.text, "feedsvc_database_reachable") == 1
    await wait_for(
        lambda: stored_ids(stack, author),
        lambda ids: ids == [posted.json()["id"]],
        60,
        "the post stored",
    )
