"""The benchmarks' arithmetic: percentiles, ratios and the search for the highest good rate."""

from __future__ import annotations

import pytest

from bench.idle import source_addresses
from bench.stats import percentile, ratio, search_rate


def test_percentile_is_the_nearest_rank_of_unsorted_values() -> None:
    """p50 and p99 of 1..100 given in reverse are 50 (or 51) and 99, p100 the maximum."""
    values = [float(x) for x in range(100, 0, -1)]
    assert percentile(values, 50) in (50.0, 51.0)
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0


def test_percentile_of_nothing_is_none_and_a_bad_rank_is_refused() -> None:
    """No values give None; a rank outside 0..100 raises."""
    assert percentile([], 99) is None
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_ratio_rounds_and_refuses_a_missing_or_zero_base() -> None:
    """value/base to two decimals; None when either is missing or the base is 0."""
    assert ratio(3, 4) == 0.75
    assert ratio(None, 4) is None
    assert ratio(3, 0) is None


def test_search_doubles_then_bisects_to_the_highest_good_rate() -> None:
    """With rates up to 300 good, the search ends near 300 and never reports a bad rate."""
    best, trials = search_rate(lambda r: (r <= 300, r), start=10, steps=12)
    assert best is not None and best.ok
    assert 280 <= best.rate <= 300
    assert [t.rate for t in trials[:6]] == [10, 20, 40, 80, 160, 320]
    assert all(t.ok == (t.rate <= 300) for t in trials)


def test_search_reports_none_when_even_the_first_rate_fails() -> None:
    """Nothing good: no best trial, and the rates tried go down from the start."""
    best, trials = search_rate(lambda r: (False, r), start=10, steps=3)
    assert best is None
    assert [t.rate for t in trials] == [10, 5, 2.5]


def test_search_stops_at_the_step_budget_and_the_ceiling() -> None:
    """At most `steps` trials; a rate above the ceiling is never tried."""
    _, trials = search_rate(lambda r: (True, r), start=10, steps=3)
    assert len(trials) == 3
    best, trials = search_rate(lambda r: (True, r), start=10, steps=10, ceiling=35)
    assert max(t.rate for t in trials) == 35
    assert best is not None and best.rate == 35


def test_enough_source_addresses_for_the_connections() -> None:
    """One loopback address per 20,000 sockets, counting up from 127.0.0.1."""
    assert source_addresses(4000) == ["127.0.0.1"]
    assert source_addresses(40_000) == ["127.0.0.1", "127.0.0.2"]
    assert source_addresses(40_001) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
