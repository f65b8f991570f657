"""`POST /messages` refused: each cause gets its status, Retry-After and error body, counted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import AsyncTestClient

from feedsvc.http.admission import Admission
from feedsvc.http.submit import Submitter, post_message
from feedsvc.messages import Submission, new_message
from feedsvc.metrics import Metrics
from tests.unit.http.fakes import FakeClaims, FakeProducer, sample, samples


@dataclass
class Api:
    """`post_message` alone, over a real `Submitter` and `Admission` wired to fakes."""

    producer: FakeProducer
    claims: FakeClaims
    admission: Admission
    metrics: Metrics
    timeout_s: float = 1.0

    def app(self) -> Litestar:
        submitter = Submitter(
            self.producer, self.admission, self.metrics, self.timeout_s, self.claims
        )
        return Litestar(
            [post_message],
            dependencies={
                "submitter": Provide(lambda: submitter, sync_to_thread=False),
            },
        )


def api() -> Api:
    return Api(FakeProducer(), FakeClaims(), Admission(max_inflight=2, max_backlog=100), Metrics())


def inflight_full(api: Api) -> None:
    api.admission.enter()
    api.admission.enter()


def writer_behind(api: Api) -> None:
    api.admission.backlog, api.admission.drain_per_s = 400, 100.0


def kafka_unreachable(api: Api) -> None:
    api.admission.kafka_failed()
    api.admission.kafka_failed()


def kafka_error(api: Api) -> None:
    api.producer.failures = [KafkaConnectionError("broker down")]


def kafka_silent(api: Api) -> None:
    api.producer.hang = True
    api.timeout_s = 0.5


def key_reused(api: Api) -> None:
    earlier = new_message(Submission(author="ada", text="earlier text"), "key-1")
    api.claims.bound[earlier.id] = earlier


CAUSES: list[tuple[Callable[[Api], None], int, str | None, str, str]] = [
    (inflight_full, 429, "1", "too_many_requests", "too many messages in flight"),
    (writer_behind, 429, "3", "too_many_requests", "the writer is behind"),
    (kafka_unreachable, 503, "2", "unavailable", "Kafka is unavailable"),
    (kafka_error, 503, "2", "unavailable", "Kafka did not acknowledge the message in time"),
    (kafka_silent, 503, "2", "unavailable", "Kafka did not acknowledge the message in time"),
    (key_reused, 422, None, "unprocessable_content", "key reused"),
]


@pytest.mark.parametrize(
    ("cause", "status", "retry_after", "error", "reason"),
    CAUSES,
    ids=[c[0].__name__ for c in CAUSES],
)
async def test_each_refusal_has_its_status_retry_after_and_count(
    cause: Callable[[Api], None], status: int, retry_after: str | None, error: str, reason: str
) -> None:
    """Busy is 429, Kafka away is 503, both with Retry-After; a reused key is 422 without."""
    parts = api()
    cause(parts)
    async with AsyncTestClient(parts.app()) as client:
        response = await client.post(
            "/messages",
            json={"author": "ada", "text": "hello"},
            headers={"Idempotency-Key": "key-1"},
        )
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    assert "location" not in response.headers
    body: dict[str, Any] = response.json()
    assert body["error"] == error
    assert parts.producer.sent == []
    assert sample(parts.metrics, "feedsvc_posts_refused_total", status=str(status), reason=reason)
    assert sample(parts.metrics, "feedsvc_posts_accepted_total") == 0
    if status == 422:
        assert body["field"] == "idempotency-key"


async def test_an_accepted_post_is_202_with_its_location() -> None:
    """Nothing in the way: 202, the message's Location, counted as accepted, nothing refused."""
    parts = api()
    async with AsyncTestClient(parts.app()) as client:
        response = await client.post("/messages", json={"author": "ada", "text": "hello"})
    assert response.status_code == 202
    assert response.headers["location"] == f"/messages/{response.json()['id']}"
    assert [m.text for m in parts.producer.sent] == ["hello"]
    assert sample(parts.metrics, "feedsvc_posts_accepted_total") == 1
    assert not any(samples(parts.metrics, "feedsvc_posts_refused_total").values())
