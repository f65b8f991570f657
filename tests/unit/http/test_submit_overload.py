"""A send that times out because the api's own event loop runs late is not Kafka failing."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from feedsvc.http.admission import Admission, Refusal
from feedsvc.http.submit import Submitter
from feedsvc.messages import Submission, new_message
from feedsvc.metrics import Metrics
from tests.unit.http.fakes import FakeClaims


class HangingProducer:
    """Never acknowledges, like a broker that is slow or a loop too busy to read the answer."""

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None = None, **options: Any
    ) -> Any:
        await asyncio.sleep(3600)


@pytest.mark.parametrize(("lag_s", "reachable"), [(1.0, True), (0.0, False)])
async def test_timeouts_count_against_kafka_only_when_the_loop_is_on_time(
    lag_s: float, reachable: bool
) -> None:
    """Two timed-out sends: 503 each; Kafka is marked down only if the loop was not late."""
    admission = Admission(max_inflight=10, max_backlog=10)
    admission.loop_lag_s = lag_s
    sub = Submitter(cast(Any, HangingProducer()), admission, Metrics(), 0.3, FakeClaims())
    for _ in range(2):
        with pytest.raises(Refusal) as refused:
            await sub.submit(new_message(Submission(author="ada", text="hi"), None), sub.deadline())
        assert refused.value.status == 503
    assert admission.kafka_reachable is reachable
