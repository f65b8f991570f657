"""Admission refuses at once, with the status and Retry-After the situation calls for."""

from __future__ import annotations

import anyio
import pytest

from feedsvc.http.admission import Admission, Refusal
from feedsvc.kafka import LagUnknown


def refusal(admission: Admission) -> Refusal:
    with pytest.raises(Refusal) as caught:
        admission.check()
    return caught.value


def test_inflight_limit() -> None:
    """The request after the limit is refused with 429; one leaving makes room again."""
    admission = Admission(max_inflight=2, max_backlog=10)
    admission.enter()
    admission.check()
    admission.enter()
    assert (refusal(admission).status, refusal(admission).retry_after_s) == (429, 1)
    admission.leave()
    admission.check()


def test_backlog_over_limit_refuses_with_drain_estimate() -> None:
    """Over the backlog limit: 429, and Retry-After is the excess over the drain rate."""
    admission = Admission(max_inflight=10, max_backlog=1000)
    admission.backlog, admission.drain_per_s = 1000, 100.0
    admission.check()
    admission.backlog = 1500
    got = refusal(admission)
    assert (got.status, got.retry_after_s) == (429, 5)
    admission.drain_per_s = 0.0
    assert refusal(admission).retry_after_s == 5
    admission.backlog, admission.drain_per_s = 1_000_000, 10.0
    assert refusal(admission).retry_after_s == 30


def test_kafka_unreachable_after_two_failures() -> None:
    """One failure may be a blip; two in a row turn POSTs into 503 until Kafka answers."""
    admission = Admission(max_inflight=10, max_backlog=10)
    admission.kafka_failed()
    admission.check()
    admission.kafka_failed()
    assert refusal(admission).status == 503
    admission.kafka_ok()
    admission.check()


async def test_watch_backlog_tracks_lag_and_drain() -> None:
    """The watcher turns (produced, committed) readings into a backlog and a drain rate."""
    readings = iter([(100, 0), (300, 100), (300, 200)])
    admission = Admission(max_inflight=10, max_backlog=10)

    async def read() -> tuple[int, int]:
        try:
            return next(readings)
        except StopIteration:
            await anyio.sleep_forever()
            raise AssertionError from None

    with anyio.move_on_after(0.5):
        await admission.watch_backlog(read, 0.05)
    assert admission.backlog == 100
    assert admission.drain_per_s > 0


async def test_watch_backlog_marks_kafka_down() -> None:
    """Lag reads that fail mark Kafka unreachable."""
    admission = Admission(max_inflight=10, max_backlog=10)

    async def read() -> tuple[int, int]:
        raise ConnectionError("broker down")

    with anyio.move_on_after(0.3):
        await admission.watch_backlog(read, 0.05)
    assert not admission.kafka_reachable


async def test_lag_unknown_is_not_a_kafka_failure() -> None:
    """A coordinator still loading means Kafka answered: POSTs stay admitted, the backlog stands."""
    admission = Admission(max_inflight=10, max_backlog=10)
    readings = 0

    async def read() -> tuple[int, int]:
        nonlocal readings
        readings += 1
        if readings == 1:
            return (7, 2)
        raise LagUnknown("coordinator load in progress")

    admission.kafka_failed()  # one real failure before: LagUnknown must not add to it
    with anyio.move_on_after(0.5):
        await admission.watch_backlog(read, 0.02)
    assert readings > 5
    assert admission.kafka_reachable
    admission.kafka_failed()
    admission.check()  # one failure after the LagUnknowns is still only one
    assert admission.backlog == 5
