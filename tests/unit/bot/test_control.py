"""`GET/PUT /rate` read and change the bucket's speed; `GET /stats` reads the counters."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from bot.control import create_app
from bot.pacing import TokenBucket
from bot.stats import Stats

pytestmark = pytest.mark.anyio


async def test_rate_is_read_and_changed() -> None:
    """PUT sets the bucket's rate, in either unit, and answers the new speed."""
    bucket = TokenBucket(2)
    async with AsyncTestClient(create_app(bucket, Stats())) as client:
        assert (await client.get("/rate")).json() == {"rate": 2, "reqs_per_min": 120}
        answer = await client.put("/rate", json={"rate": 0.5})
        assert answer.status_code == 200
        assert answer.json() == {"rate": 0.5, "reqs_per_min": 30}
        assert bucket.rate == 0.5
        await client.put("/rate", json={"reqs_per_min": 600})
        assert bucket.rate == 10
        await client.put("/rate", json={"rate": 0})
        assert bucket.rate == 0
        # What `curl -X PUT host:8001/rate -d 50` sends: a bare number, form content type.
        answer = await client.put(
            "/rate", content=b"50", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert answer.json() == {"rate": 50, "reqs_per_min": 3000}


@pytest.mark.parametrize(
    "body",
    [
        {"rate": -1},
        {"rate": 1e9},
        {"reqs_per_min": -60},
        {"rate": 1, "reqs_per_min": 60},
        {},
        {"rate": "fast"},
        {"speed": 3},
        -5,
        "fast",
        None,
    ],
)
async def test_bad_rate_is_refused_and_changes_nothing(body: object) -> None:
    """An impossible or ambiguous speed gets 400 and the rate stays as it was."""
    bucket = TokenBucket(2)
    async with AsyncTestClient(create_app(bucket, Stats())) as client:
        answer = await client.put("/rate", json=body)
        assert answer.status_code == 400, answer.text
    assert bucket.rate == 2


async def test_stats_are_readable() -> None:
    """GET /stats shows the counters and the target rate."""
    stats = Stats()
    stats.sent, stats.accepted = 5, 4
    stats.rejected[429] = 1
    async with AsyncTestClient(create_app(TokenBucket(3), stats)) as client:
        body = (await client.get("/stats")).json()
    assert body["sent"] == 5
    assert body["accepted"] == 4
    assert body["rejected"] == {"429": 1}
    assert body["target_rate"] == 3
