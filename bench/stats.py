"""Pure arithmetic of the benchmarks: percentiles and the search for the highest good rate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q`th percentile (0..100) of `values`, which need not be sorted."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds with one decimal; None stays None."""
    return None if seconds is None else round(seconds * 1000, 1)


def ratio(value: float | None, base: float | None) -> float | None:
    """`value / base` to two decimals, or None when either is missing or `base` is 0."""
    if value is None or not base:
        return None
    return round(value / base, 2)


@dataclass(frozen=True)
class Trial(Generic[T]):
    """One measured rate and whether it met the bound."""

    rate: float
    ok: bool
    outcome: T


def search_rate(
    measure: Callable[[float], tuple[bool, T]], start: float, steps: int, *, ceiling: float = 1e9
) -> tuple[Trial[T] | None, list[Trial[T]]]:
    """The highest rate at which `measure` says ok, found in at most `steps` trials.

    Doubles from `start` until a trial fails (or `ceiling`), then bisects between the last
    good and the first bad rate. Returns the best good trial (None if none was good) and
    every trial in order. Note: assumes ok is monotone in the rate, as a latency bound is.
    """
    trials: list[Trial[T]] = []
    good: Trial[T] | None = None
    low, high = 0.0, None
    rate = start
    for _ in range(steps):
        ok, outcome = measure(rate)
        trial = Trial(rate, ok, outcome)
        trials.append(trial)
        if ok:
            good, low = trial, rate
        else:
            high = rate
        if high is None:
            if rate >= ceiling:
                break
            rate = min(rate * 2, ceiling)
        else:
            if high - low <= max(1.0, 0.05 * high):
                break
            rate = (low + high) / 2 if low else high / 2
        rate = round(rate, 1)
    return good, trials
