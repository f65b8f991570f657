"""`PUT /rate` on the control port changes the speed of a running bot at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

if TYPE_CHECKING:  # fixtures, handed in by pytest; the import is for the type checker only
    from tests.integration.bot.conftest import RecordingApi, StartBot


async def test_runtime_speed_change_takes_effect(api: RecordingApi, start_bot: StartBot) -> None:
    """From 2/s to 50/s (within 5%), to idle, and back, without a restart."""
    bot = await start_bot("--api-url", api.url, "--rate", "2")
    control = await bot.control_url()
    await api.wait_for(2, within=10)
    async with httpx.AsyncClient(base_url=control) as client:
        assert (await client.get("/rate")).json() == {"rate": 2, "reqs_per_min": 120}

        answer = await client.put("/rate", json={"rate": 50})
        assert answer.json() == {"rate": 50, "reqs_per_min": 3000}
        changed_at = anyio.current_time()
        before = len(api.arrivals)
        arrivals = await api.wait_for(before + 120, within=10)
        # The first 20 at the new pace are skipped: the bot opens more connections.
        window = arrivals[before + 20 :]
        assert window[0].at - changed_at < 1.0
        assert api.rate(window) == pytest.approx(50, rel=0.05)

        await client.put("/rate", json={"reqs_per_min": 0})
        idle_from = anyio.current_time() + 0.2  # what was in flight may still land
        await anyio.sleep(1.2)  # observing that nothing comes needs time, not a condition
        assert not [a for a in api.arrivals if a.at > idle_from]

        await client.put("/rate", content=b"5")
        resumed_at = anyio.current_time()
        count = len(api.arrivals)
        (*_, next_one) = await api.wait_for(count + 1, within=5)
        assert next_one.at - resumed_at < 0.3

        refused = await client.put("/rate", json={"rate": -1})
        assert refused.status_code == 400
        assert (await client.get("/rate")).json()["rate"] == 5
    assert await bot.stop() == 0
