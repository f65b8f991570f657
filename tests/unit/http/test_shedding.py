"""POSTs that admission refuses are answered at the door, as the handler would answer them."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, post
from litestar.testing import AsyncTestClient

from feedsvc.http.admission import Admission
from feedsvc.http.errors import problem
from feedsvc.http.shedding import ShedPosts
from feedsvc.metrics import Metrics
from tests.unit.http.fakes import sample

BODY = {"author": "ada", "text": "hello"}


def app(
    admission: Admission, metrics: Metrics, *, cors: bool = False
) -> tuple[Litestar, list[str]]:
    """A Litestar app whose POST /messages only notes that it ran, behind ShedPosts."""
    reached: list[str] = []

    @post("/messages", status_code=202)
    async def handler() -> dict[str, str]:
        reached.append("handler")
        return {"status": "accepted"}

    litestar = Litestar([handler], logging_config=None)
    litestar.asgi_handler = ShedPosts(litestar.asgi_handler, admission, metrics, cors=cors)
    return litestar, reached


def metrics() -> Metrics:
    return Metrics()


async def test_full_inflight_is_refused_before_the_handler() -> None:
    """Every slot taken: 429 with Retry-After and the handler's body, the handler never runs."""
    admission = Admission(max_inflight=1, max_backlog=10)
    admission.enter()
    counted = metrics()
    litestar, reached = app(admission, counted)
    async with AsyncTestClient(litestar) as client:
        r = await client.post("/messages", json=BODY)
        again = await client.post("/messages", content=b"not even json")
    expected = problem(429, "too many messages in flight")
    assert (r.status_code, r.headers["retry-after"], r.content) == (429, "1", expected.content)
    assert r.headers["content-type"] == "application/json"
    assert again.status_code == 429
    assert reached == []
    labels: dict[str, Any] = {"status": "429", "reason": "too many messages in flight"}
    assert sample(counted, "feedsvc_posts_refused_total", **labels) == 2


async def test_kafka_down_and_backlog_are_refused_at_the_door() -> None:
    """Kafka known down: 503 with Retry-After 2; writer behind: 429 with the drain estimate."""
    admission = Admission(max_inflight=10, max_backlog=100)
    admission.kafka_failed()
    admission.kafka_failed()
    litestar, reached = app(admission, metrics())
    async with AsyncTestClient(litestar) as client:
        down = await client.post("/messages", json=BODY)
        admission.kafka_ok()
        admission.backlog, admission.drain_per_s = 400, 100.0
        behind = await client.post("/messages", json=BODY)
    assert (down.status_code, down.headers["retry-after"]) == (503, "2")
    assert (behind.status_code, behind.headers["retry-after"]) == (429, "3")
    assert reached == []


async def test_admitted_posts_and_other_requests_pass() -> None:
    """With room, POST /messages reaches the handler; other paths are never refused here."""
    admission = Admission(max_inflight=1, max_backlog=10)
    litestar, reached = app(admission, metrics())
    async with AsyncTestClient(litestar) as client:
        assert (await client.post("/messages", json=BODY)).status_code == 202
        admission.enter()
        assert (await client.post("/other", json=BODY)).status_code == 404
    assert reached == ["handler"]


async def test_cross_origin_posts_go_to_the_handler_when_cors_is_on() -> None:
    """With CORS on, a request with Origin is refused by the handler, where CORS headers are
    added; without Origin, or with CORS off, at the door."""
    admission = Admission(max_inflight=1, max_backlog=10)
    admission.enter()
    litestar, reached = app(admission, metrics(), cors=True)
    async with AsyncTestClient(litestar) as client:
        await client.post("/messages", json=BODY, headers={"Origin": "https://app.example"})
        await client.post("/messages", json=BODY)
    assert reached == ["handler"]
    litestar, reached = app(admission, metrics(), cors=False)
    async with AsyncTestClient(litestar) as client:
        await client.post("/messages", json=BODY, headers={"Origin": "https://app.example"})
    assert reached == []
