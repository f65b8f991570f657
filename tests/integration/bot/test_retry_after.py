"""After a 429/503 with `Retry-After`, nothing reaches the api until the wait is over."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:  # fixtures, handed in by pytest; the import is for the type checker only
    from tests.integration.bot.conftest import RecordingApi, StartBot

# A request already on its way when the refusal is sent cannot be called back; on
# localhost it arrives within a few milliseconds, so this is ample.
IN_FLIGHT_S = 0.1
TIMER_GRID_S = 0.002


@pytest.mark.parametrize(("status", "concurrency"), [(429, 1), (503, 8)])
async def test_no_request_before_retry_after_elapses(
    api: RecordingApi, start_bot: StartBot, status: int, concurrency: int
) -> None:
    """The request after a refusal with `Retry-After: 1` arrives a second later, not before."""
    api.plan[5] = (status, "1")
    bot = await start_bot("--api-url", api.url, "--rate", "20", "--concurrency", str(concurrency))
    arrivals = await api.wait_for(5 + 20, within=15)
    refused = arrivals[5]
    assert refused.status == status
    after = [a.at - refused.answered_at for a in arrivals[6:]]
    if concurrency == 1:
        # uvloop fires timers on a 1 ms grid, so a wait may end up to a millisecond early.
        assert min(after) >= 1.0 - TIMER_GRID_S
    else:
        assert not [gap for gap in after if IN_FLIGHT_S < gap < 1.0]
    resumed = min(gap for gap in after if gap >= 1.0)
    assert resumed < 1.0 + 0.5  # and it does start again
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"{await bot.control_url()}/stats")).json()
    assert stats["rejected"] == {str(status): 1}
    assert stats["retry_after_waits"] == 1
    assert stats["retry_after_s"] == 1.0
    assert await bot.stop() == 0


async def test_refused_message_is_sent_again(api: RecordingApi, start_bot: StartBot) -> None:
    """The message refused with 429 comes again with the same body and `Idempotency-Key`."""
    api.plan[0] = (429, "0")
    bot = await start_bot("--api-url", api.url, "--rate", "10", "--concurrency", "1")
    first, second = await api.wait_for(2, within=10)
    assert second.body == first.body
    assert second.headers["idempotency-key"] == first.headers["idempotency-key"]
    assert await bot.stop() == 0
