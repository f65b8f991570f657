"""When the bot may send again: the api's `Retry-After`, and backoff while it is unreachable."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import anyio

DEFAULT_RETRY_AFTER_S = 1.0
"""The wait after a 429/503 without a usable `Retry-After` (the api always sends one)."""

MAX_RETRY_AFTER_S = 300.0
"""A longer `Retry-After` is capped: the bot should notice a recovered api within minutes."""

# RFC 9110 allows whole seconds only; a fraction costs nothing to honour.
_SECONDS = re.compile(r"\d+(\.\d+)?")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float:
    """Seconds to wait for a `Retry-After` header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    Note: a missing or unreadable value means `DEFAULT_RETRY_AFTER_S`, never "send now".
    """
    if value is None:
        return DEFAULT_RETRY_AFTER_S
    value = value.strip()
    if _SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_S
        if when.tzinfo is None:  # "-0000" in an HTTP-date still means UTC
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class Backpressure:
    """A shared "send nothing before" time that every worker honours before each request.

    Note: `Retry-After` and connection backoff only ever push the time later, so one worker's
    short wait never cuts short another's longer one. Backoff doubles per consecutive failure
    (any answer from the api resets it) with jitter, so many bots do not retry in step.
    """

    def __init__(
        self, *, base_s: float = 0.1, cap_s: float = 10.0, rnd: random.Random | None = None
    ) -> None:
        self._until = 0.0
        self._failures = 0
        self._base_s = base_s
        self._cap_s = cap_s
        self._random = rnd or random.Random()

    @property
    def failing(self) -> bool:
        """True from a failure until the api answers again."""
        return self._failures > 0

    @property
    def remaining(self) -> float:
        """Seconds until sending is allowed again (0 when it is allowed now)."""
        return max(0.0, self._until - anyio.current_time())

    def retry_after(self, seconds: float) -> None:
        """The api answered 429/503: send nothing for `seconds`."""
        self._failures = 0
        self._hold(seconds)

    def failed(self) -> float:
        """The api was unreachable or failed: hold off one backoff step; returns its length."""
        self._failures += 1
        step = min(self._cap_s, self._base_s * 2.0 ** min(self._failures - 1, 30))
        delay = step / 2 + self._random.uniform(0, step / 2)
        self._hold(delay)
        return delay

    def answered(self) -> None:
        """The api answered: the next failure starts the backoff from the bottom again."""
        self._failures = 0

    async def wait(self, stop: anyio.Event) -> bool:
        """Return once sending is allowed, or at once when `stop` is set; True if it waited."""
        waited = False
        while (delay := self.remaining) > 0 and not stop.is_set():
            waited = True
            # Re-read the time after waking: another worker may have pushed it later.
            with anyio.move_on_after(delay):
                await stop.wait()
        return waited

    def _hold(self, seconds: float) -> None:
        self._until = max(self._until, anyio.current_time() + seconds)
