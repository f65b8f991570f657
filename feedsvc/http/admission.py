"""Back pressure: whether the api may take one more message, and when to ask again."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

import anyio

from feedsvc.kafka import LagUnknown

log = logging.getLogger(__name__)

LagReader = Callable[[], Awaitable[tuple[int, int]]]
"""Returns (records produced, records the writer committed) summed over partitions;
raises `LagUnknown` when Kafka answered but cannot tell the writer's progress yet."""


class Refusal(Exception):
    """The api will not take this message now; the client should retry later."""

    def __init__(self, status: int, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s


class Admission:
    """Admits a POST only when it can be handled now; never makes a caller wait in line.

    Note: three layers (ARCHITECTURE.md#back-pressure): a bounded count of sends in flight, the
    writer's backlog (read in the background, never per request), and Kafka's
    reachability as last seen. The counters are plain ints: all callers share one
    event loop, and nothing awaits between a check and its update.
    """

    def __init__(self, max_inflight: int, max_backlog: int, max_loop_lag_s: float = 0.2) -> None:
        self.max_inflight = max_inflight
        self.max_backlog = max_backlog
        self.max_loop_lag_s = max_loop_lag_s
        self.loop_lag_s = 0.0
        """How late the event loop last ran a timer: how long anything ready waits its turn."""
        self.inflight = 0
        self.backlog: int | None = None
        self.drain_per_s = 0.0
        self.kafka_reachable = True
        self.last_refresh = 0.0
        self._failures = 0

    def check(self) -> None:
        """Raise `Refusal` if a new message must be turned away now."""
        refusal = self.refusal()
        if refusal is not None:
            raise refusal

    def refusal(self) -> Refusal | None:
        """Why a new message must be turned away now, or None when it may come in."""
        if self.inflight >= self.max_inflight:
            return Refusal(429, "too many messages in flight", 1)
        if self.backlog is not None and self.backlog > self.max_backlog:
            return Refusal(429, "the writer is behind", self.backlog_retry_after())
        if not self.kafka_reachable:
            return Refusal(503, "Kafka is unavailable", 2)
        return None

    @property
    def overloaded(self) -> bool:
        """The event loop runs late: the api has more to do than its core can do.

        Note: not a reason to refuse a POST. Under overload most of the loop's work is
        refusing (PostsAtTheDoor), so refusing on lag as well starved the posts it could
        take (0 accepted in a trial) without making a refusal faster.
        """
        return self.loop_lag_s > self.max_loop_lag_s

    def backlog_retry_after(self) -> int:
        """Seconds until the backlog, draining at the rate last seen, is under its limit."""
        excess = (self.backlog or 0) - self.max_backlog
        if self.drain_per_s < 1:
            return 5  # not draining at all (database down?): ask again soon, not never
        return max(1, min(30, math.ceil(excess / self.drain_per_s)))

    def enter(self) -> None:
        """Count a send in flight; pair with `leave`."""
        self.inflight += 1

    def leave(self) -> None:
        """A send in flight has finished, however it ended."""
        self.inflight -= 1

    def kafka_failed(self) -> None:
        """A send or a lag read could not reach Kafka."""
        self._failures += 1
        if self._failures >= 2 and self.kafka_reachable:
            self.kafka_reachable = False
            log.warning("kafka unreachable: POST answers 503 until it is back")

    def kafka_ok(self) -> None:
        """Kafka answered."""
        self._failures = 0
        if not self.kafka_reachable:
            self.kafka_reachable = True
            log.info("kafka reachable again")

    async def watch_loop(self, every_s: float = 0.1) -> None:
        """Keep `loop_lag_s` current until cancelled.

        Note: a saturated loop makes every wait late, Kafka's acknowledgements and
        lag reads included; such a timeout says nothing about Kafka, and must not turn
        every POST into a 503 "Kafka is unavailable". The lag rises at once and falls
        over a few rounds.
        """
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + every_s
            await asyncio.sleep(every_s)
            late = max(loop.time() - due, 0.0)
            self.loop_lag_s = max(late, 0.7 * self.loop_lag_s + 0.3 * late)

    async def watch_backlog(self, read_lag: LagReader, every_s: float) -> None:
        """Keep `backlog` and `drain_per_s` current until cancelled.

        Note: `LagUnknown` (e.g. the group coordinator of a fresh broker still
        loading) is no Kafka failure: Kafka answered. The last backlog seen stands.
        """
        previous: tuple[float, int] | None = None
        while True:
            try:
                with anyio.fail_after(max(every_s * 5, 5)):
                    produced, committed = await read_lag()
            except LagUnknown as exc:
                log.debug("backlog unknown for now", extra={"error": repr(exc)})
                self.kafka_ok()
            except Exception as exc:
                log.debug("backlog read failed", extra={"error": repr(exc)})
                if not (isinstance(exc, TimeoutError) and self.overloaded):
                    self.kafka_failed()
            else:
                now = time.monotonic()
                self.kafka_ok()
                self.backlog = max(produced - committed, 0)
                self.last_refresh = now
                if previous is not None and now > previous[0]:
                    rate = (committed - previous[1]) / (now - previous[0])
                    # A moving average, so one idle second does not zero the estimate.
                    self.drain_per_s = 0.7 * self.drain_per_s + 0.3 * max(rate, 0.0)
                previous = (now, committed)
            await anyio.sleep(every_s)
