"""What the bot has done so far, and the periodic log line that reports it."""

from __future__ import annotations

import logging
from collections import Counter

import anyio
import msgspec

from bot.pacing import TokenBucket

log = logging.getLogger("bot.stats")


class Snapshot(msgspec.Struct, frozen=True):
    """Counters since start (`rate` is the achieved rate over the last interval only)."""

    sent: int
    """POST requests made, retries included; each one took a token."""
    accepted: int
    """Answered 202."""
    rejected: dict[str, int]
    """Answered anything else, by status code."""
    errors: int
    """Requests that got no answer: connection refused, reset, timed out."""
    retry_after_waits: int
    """Times the bot stopped sending because of a 429/503 `Retry-After`."""
    retry_after_s: float
    """Seconds of waiting those `Retry-After`s asked for, in total."""
    in_flight: int
    """Requests sent and not yet answered."""
    target_rate: float
    """Messages per second the bot aims for now."""
    rate: float
    """Requests per second actually sent over the last stats interval."""


class Stats:
    """Counters of one run, updated by the workers; one event loop, so no locking."""

    def __init__(self) -> None:
        self.sent = 0
        self.accepted = 0
        self.rejected: Counter[int] = Counter()
        self.errors = 0
        self.retry_after_waits = 0
        self.retry_after_s = 0.0
        self.in_flight = 0
        self.rate = 0.0

    def snapshot(self, target_rate: float) -> Snapshot:
        """The counters as they are now."""
        return Snapshot(
            sent=self.sent,
            accepted=self.accepted,
            rejected={str(status): n for status, n in sorted(self.rejected.items())},
            errors=self.errors,
            retry_after_waits=self.retry_after_waits,
            retry_after_s=round(self.retry_after_s, 3),
            in_flight=self.in_flight,
            target_rate=target_rate,
            rate=round(self.rate, 3),
        )


def log_line(stats: Stats, bucket: TokenBucket, msg: str = "stats") -> None:
    """Write the counters as one structured log line."""
    log.info(msg, extra=msgspec.structs.asdict(stats.snapshot(bucket.rate)))


async def report(stats: Stats, bucket: TokenBucket, interval: float, concurrency: int) -> None:
    """Log one stats line every `interval` seconds until cancelled.

    Note: when every request slot is busy and the rate falls short, a warning says so:
    the api is slower than the rate needs at this concurrency.
    """
    last_sent, last_time = stats.sent, anyio.current_time()
    while True:
        await anyio.sleep(interval)
        now = anyio.current_time()
        # Measured over the time that really passed, so a late wake-up does not skew it.
        stats.rate = (stats.sent - last_sent) / (now - last_time)
        last_sent, last_time = stats.sent, now
        log_line(stats, bucket)
        if stats.in_flight >= concurrency and stats.rate < 0.95 * bucket.rate:
            log.warning(
                "rate held back by --concurrency",
                extra={"concurrency": concurrency, "rate": round(stats.rate, 3)},
            )
