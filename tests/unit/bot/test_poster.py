"""The poster sends valid messages, retries what back pressure refused, and never crashes."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import anyio
import httpx
import pytest

from bot.backpressure import Backpressure
from bot.content import MessageGenerator
from bot.pacing import TokenBucket
from bot.poster import Poster
from bot.stats import Stats
from feedsvc.messages import decode_submission

pytestmark = pytest.mark.anyio

Answer = Callable[[int], httpx.Response]


class Recorder:
    """A fake api at the transport level: records requests, answers the n-th with `answer(n)`."""

    def __init__(self, answer: Answer) -> None:
        self.requests: list[tuple[float, httpx.Request]] = []
        self._answer = answer

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((anyio.current_time(), request))
        return self._answer(len(self.requests) - 1)


def accept(_: int) -> httpx.Response:
    return httpx.Response(202, json={"status": "accepted"})


async def _post(
    answer: Answer, *, count: int, rate: float = 200, stop_after: float = 5
) -> tuple[Recorder, Stats]:
    recorder = Recorder(answer)
    stats = Stats()
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as client:
        poster = Poster(
            client,
            "http://api",
            MessageGenerator(1, 5),
            TokenBucket(rate),
            Backpressure(base_s=0.02, cap_s=0.1),
            stats,
            count=count,
        )
        stop = anyio.Event()
        with anyio.fail_after(stop_after):
            await poster.run(4, stop)
    return recorder, stats


async def test_posts_count_valid_messages_then_returns() -> None:
    """With `count=20` exactly twenty valid JSON bodies are posted to /messages."""
    recorder, stats = await _post(accept, count=20)
    assert len(recorder.requests) == 20
    for _, request in recorder.requests:
        assert request.url == "http://api/messages"
        assert request.headers["content-type"] == "application/json"
        decode_submission(request.content)
    assert (stats.sent, stats.accepted, stats.in_flight) == (20, 20, 0)


@pytest.mark.parametrize("status", [429, 503])
async def test_refused_message_is_resent_after_retry_after(status: int) -> None:
    """A 429/503 is counted, and the same message (same key) goes again once the wait is over."""

    def answer(n: int) -> httpx.Response:
        if n == 0:
            return httpx.Response(status, headers={"Retry-After": "0.3"})
        return accept(n)

    recorder, stats = await _post(answer, count=1)
    (t0, first), (t1, second) = recorder.requests
    assert second.content == first.content
    assert second.headers["idempotency-key"] == first.headers["idempotency-key"]
    assert t1 - t0 >= 0.3
    assert stats.rejected == {status: 1}
    assert (stats.retry_after_waits, stats.retry_after_s, stats.accepted) == (1, 0.3, 1)


async def test_connection_errors_back_off_and_never_crash() -> None:
    """Refused connections and even unexpected errors are counted and retried."""

    def answer(n: int) -> httpx.Response:
        if n < 3:
            raise httpx.ConnectError("connection refused")
        if n == 3:
            raise RuntimeError("something nobody expected")
        return accept(n)

    recorder, stats = await _post(answer, count=1)
    times = [t for t, _ in recorder.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(recorder.requests) == 5
    # Backoff base 0.02 s doubling, jitter up to half: each gap is at least half its step.
    for gap, step in zip(gaps, [0.02, 0.04, 0.08, 0.1], strict=True):
        assert gap >= step / 2
    assert (stats.errors, stats.accepted) == (4, 1)


async def test_client_error_is_not_retried() -> None:
    """A 400 is counted by status and the message dropped: sending it again cannot help."""
    recorder, stats = await _post(lambda _: httpx.Response(400, json={"error": "x"}), count=3)
    assert len(recorder.requests) == 3
    assert stats.rejected == {400: 3}
    assert stats.accepted == 0


async def test_server_error_is_retried_with_backoff() -> None:
    """A 500 counts as rejected and the message is sent again after a backoff."""
    recorder, stats = await _post(lambda n: httpx.Response(500) if n == 0 else accept(n), count=1)
    assert len(recorder.requests) == 2
    assert (stats.rejected, stats.accepted) == ({500: 1}, 1)


async def test_stop_returns_promptly_during_a_long_wait() -> None:
    """Stopping while every worker waits out a 60 s `Retry-After` returns at once."""
    recorder = Recorder(lambda _: httpx.Response(429, headers={"Retry-After": "60"}))
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as client:
        poster = Poster(
            client, "http://api", MessageGenerator(1, 5), TokenBucket(50), Backpressure(), Stats()
        )
        stop = anyio.Event()
        with anyio.fail_after(1):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poster.run, 4, stop)
                await anyio.sleep(0.2)
                stop.set()
    assert 1 <= len(recorder.requests) <= 4


async def test_one_probe_at_a_time_while_unreachable() -> None:
    """Once a request has failed, eight workers send one request at a time, not eight."""
    probes = peak = failed = 0

    async def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal probes, peak, failed
        # Only requests sent once a failure was known count: those sent before it could
        # not know, and on a busy machine some are still in flight when the probing starts.
        probe = failed > 0
        if probe:
            probes += 1
            peak = max(peak, probes)
        await anyio.sleep(0.01)
        if probe:
            probes -= 1
        failed += 1
        raise httpx.ConnectError("connection refused")

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        stats = Stats()
        poster = Poster(
            client,
            "http://api",
            MessageGenerator(1, 5),
            TokenBucket(1000),
            Backpressure(base_s=0.01, cap_s=0.02),
            stats,
        )
        with anyio.move_on_after(0.5):
            await poster.run(8, anyio.Event())
    assert stats.errors > 5
    assert peak == 1


async def test_no_burst_after_retry_after() -> None:
    """Tokens saved during a `Retry-After` pause are not spent at once when it ends."""

    def answer(n: int) -> httpx.Response:
        if n == 5:
            return httpx.Response(429, headers={"Retry-After": "0.5"})
        return accept(n)

    recorder, _ = await _post(answer, count=40, rate=100)
    refused_at = recorder.requests[5][0]
    resumed = [t for t, _ in recorder.requests if t >= refused_at + 0.5]
    # At 100/s the first 0.1 s after the pause holds ~10; the saved 0.5 s would be 50.
    assert len([t for t in resumed if t < resumed[0] + 0.1]) <= 13


async def test_a_spent_quota_holds_the_next_post_for_its_window() -> None:
    """A 202 with `RateLimit: ...;r=0;t=1` holds every worker for 1 s, without a 429 first."""

    def answer(n: int) -> httpx.Response:
        if n == 0:
            return httpx.Response(202, json={}, headers={"RateLimit": '"posts";r=0;t=1'})
        return accept(n)

    recorder, stats = await _post(answer, count=2, rate=100)
    (t0, _), (t1, _) = recorder.requests
    assert t1 - t0 >= 1.0
    assert stats.accepted == 2 and not stats.rejected


async def test_a_429_waits_the_longer_of_retry_after_and_the_quota_window() -> None:
    """A 429 whose `RateLimit` window outlasts its `Retry-After` is waited out in full."""

    def answer(n: int) -> httpx.Response:
        if n == 0:
            headers = {"Retry-After": "0", "RateLimit": '"posts";r=0;t=1'}
            return httpx.Response(429, headers=headers)
        return accept(n)

    recorder, stats = await _post(answer, count=1)
    (t0, _), (t1, _) = recorder.requests
    assert t1 - t0 >= 1.0
    assert stats.retry_after_s == 1.0
