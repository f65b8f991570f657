"""Every interval one structured log line reports the counters and the achieved rate."""

from __future__ import annotations

import logging

import anyio
import pytest

from bot.pacing import TokenBucket
from bot.stats import Stats, report

pytestmark = pytest.mark.anyio


async def test_one_line_per_interval_with_the_achieved_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With 10 requests counted per 0.1 s interval the line says about 100 per second."""
    caplog.set_level(logging.INFO, logger="bot.stats")
    stats = Stats()

    async def count_requests() -> None:
        while True:
            await anyio.sleep(0.01)
            stats.sent += 1
            stats.accepted += 1

    with anyio.move_on_after(0.55):
        async with anyio.create_task_group() as tg:
            tg.start_soon(count_requests)
            tg.start_soon(report, stats, TokenBucket(100), 0.1, 16)
    lines = [r for r in caplog.records if r.name == "bot.stats"]
    assert 4 <= len(lines) <= 6
    last = lines[-1].__dict__
    assert last["msg"] == "stats"
    assert last["target_rate"] == 100
    assert last["rate"] == pytest.approx(100, rel=0.25)
    assert last["sent"] == last["accepted"] > 0
    assert last["rejected"] == {}
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


async def test_warns_when_concurrency_holds_the_rate_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """All slots busy and the rate short of the target: a warning names --concurrency."""
    stats = Stats()
    stats.in_flight = 4
    with anyio.move_on_after(0.15):
        await report(stats, TokenBucket(100), 0.1, 4)
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "--concurrency" in warning.getMessage()
