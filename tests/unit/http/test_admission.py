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


async def test_watch_loop_sees_a_blocked_loop() -> None:
    """A loop blocked for 0.4 s shows as lag above 0.2 s (overloaded), and it falls again."""
    import time

    admission = Admission(max_inflight=10, max_backlog=10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(admission.watch_loop, 0.01)
        await anyio.sleep(0.05)
        assert not admission.overloaded
        time.sleep(0.4)  # noqa: ASYNC251 (the point: the whole loop stalls, as under a flood)
        seen = 0.0
        for _ in range(5):
            await anyio.sleep(0.005)
            seen = max(seen, admission.loop_lag_s)
        assert seen > admission.max_loop_lag_s, seen
        for _ in range(200):
            await anyio.sleep(0.02)
            if not admission.overloaded:
                break
        assert not admission.overloaded, admission.loop_lag_s
        tg.cancel_scope.cancel()


async def test_a_late_lag_read_while_overloaded_is_no_kafka_failure() -> None:
    """Lag reads timing out while the loop runs late leave Kafka reachable; other failures
    still count."""
    admission = Admission(max_inflight=10, max_backlog=10)
    admission.loop_lag_s = 1.0
    failure: Exception = TimeoutError()

    async def read() -> tuple[int, int]:
        raise failure

    for expected in (True, False):
        async with anyio.create_task_group() as tg:
            tg.start_soon(admission.watch_backlog, read, 0.01)
            await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        assert admission.kafka_reachable is expected
        failure = OSError("connection refused")
