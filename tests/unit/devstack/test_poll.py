"""The one polling helper: bounded waits that return what they waited for or fail naming it."""

from __future__ import annotations

import itertools
import time

import pytest

from devstack.poll import Timeout, wait_for, wait_settled, wait_until


def test_wait_until_returns_the_first_true_value() -> None:
    """The check's first true value comes back, after as many calls as it took."""
    calls = itertools.count(1)
    assert wait_until(lambda: max(0, next(calls) - 2), 5, "the third call") == 1


def test_wait_until_fails_naming_what_and_the_last_value() -> None:
    """A condition that never holds raises Timeout after its bound, naming it and the last value."""
    began = time.monotonic()
    with pytest.raises(Timeout, match=r"after 0.3s waiting for the row; last: None"):
        wait_until(lambda: None, 0.3, "the row")
    assert 0.3 <= time.monotonic() - began < 2


def test_wait_until_does_not_repeat_a_false_bool() -> None:
    """A plain condition's message says what was awaited, not `last: False`."""
    with pytest.raises(Timeout) as caught:
        wait_until(lambda: False, 0.1, "the api")
    assert str(caught.value) == "timed out after 0.1s waiting for the api"


def test_wait_until_backs_off_to_its_ceiling() -> None:
    """Pauses grow from `interval` to `max_interval`: few calls over a long wait."""
    calls = 0

    def never() -> bool:
        nonlocal calls
        calls += 1
        return False

    with pytest.raises(Timeout):
        wait_until(never, 1.0, "nothing", interval=0.01, max_interval=0.2)
    # An even 0.01 s pace would make about 100 calls; growing by half to 0.2 s, about 15.
    assert calls < 30


async def test_the_timeout_message_keeps_a_long_value_short() -> None:
    """The last value is abbreviated: a timeout over a page of records stays readable."""

    async def page() -> list[int]:
        return list(range(10_000))

    with pytest.raises(Timeout) as caught:
        await wait_for(page, lambda _: False, 0.05, "records")
    assert "last: [0, 1, 2" in str(caught.value)
    assert len(str(caught.value)) < 500


async def test_wait_for_returns_the_result_once_done() -> None:
    """The async twin awaits its probe until `done` holds of the result, and returns it."""
    counter = itertools.count()

    async def probe() -> int:
        return next(counter)

    assert await wait_for(probe, lambda n: n >= 3, 5, "three") == 3


async def test_wait_for_fails_naming_what_and_the_last_result() -> None:
    """After its bound the async twin raises Timeout with the last result it saw."""

    async def probe() -> str:
        return "HTTP 503"

    with pytest.raises(Timeout, match=r"waiting for ready; last: 'HTTP 503'"):
        await wait_for(probe, lambda status: status == "HTTP 200", 0.2, "ready")


def test_wait_settled_stops_when_the_count_stops_growing() -> None:
    """A count stuck below its target ends the wait after `idle_s`, not after `limit_s`."""
    began = time.monotonic()
    last, _ = wait_settled(lambda: 7, 10, idle_s=0.3, limit_s=30)
    assert last == 7
    assert time.monotonic() - began < 5
