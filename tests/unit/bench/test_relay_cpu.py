"""`bench.relay_cpu`: the in-process fan-out measurement runs and delivers every event."""

from __future__ import annotations

import math

from bench.relay_cpu import measure


async def test_every_stream_gets_every_event_and_a_cost_is_measured() -> None:
    """It returns only once each of the streams has every event (else it would hang)."""
    per_delivery = await measure(streams=20, events=5)
    assert 0 < per_delivery < 1 and math.isfinite(per_delivery)
