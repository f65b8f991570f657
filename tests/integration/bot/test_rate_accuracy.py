"""The bot's achieved rate, measured at a real HTTP server, is within 5% of the target."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # fixtures, handed in by pytest; the import is for the type checker only
    from tests.integration.bot.conftest import RecordingApi, StartBot


@pytest.mark.parametrize(
    ("rate", "skip", "intervals"),
    [
        # (rate per second, arrivals skipped while the bot warms up: connections open, code
        # paths run the first time; intervals measured). Each window is long enough that
        # one arrival 10 ms late moves the result by under 0.5%.
        # The lowest rate; 30 s, so only with the long drills (-m slow).
        pytest.param(0.1, 0, 3, marks=pytest.mark.slow),
        (0.5, 0, 3),  # 6 s; the bucket's first token is free, so no warm-up to skip
        (5, 3, 20),  # 4 s
        # 50/s, not hundreds: a test shares two cores with the server it measures, and a
        # loaded machine then measures itself. Higher rates are for `scripts/bench`.
        (50, 50, 200),  # 4 s
    ],
)
async def test_achieved_rate_is_within_five_percent(
    api: RecordingApi, start_bot: StartBot, rate: float, skip: int, intervals: int
) -> None:
    """Arrivals at the server come at the target rate, to within 5%."""
    bot = await start_bot(
        "--api-url", api.url, "--rate", str(rate), "--concurrency", "16", "--stats-interval", "1"
    )
    arrivals = await api.wait_for(skip + intervals + 1, within=intervals / rate + 15)
    window = arrivals[skip:]
    achieved = api.rate(window)
    print(f"rate {rate}/s over {window[-1].at - window[0].at:.2f} s: achieved {achieved:.4f}/s")
    assert achieved == pytest.approx(rate, rel=0.05)
    assert {a.status for a in arrivals} == {202}  # every message passed the api's rules
    assert await bot.stop() == 0
