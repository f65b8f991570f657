"""The token bucket that sets the bot's speed, changeable while the bot runs."""

from __future__ import annotations

import anyio

MAX_RATE = 10_000.0
"""Messages per second one bot may be asked for; one Python process tops out well below."""


class TokenBucket:
    """Hands out one token per request at `rate` tokens per second; `rate` may change any time.

    Note: create it inside the event loop. Tokens saved while nobody asks are capped at
    `burst_s` seconds' worth (at least one), so a pause is not followed by a flood; waiters
    are served first come, first served. A rate of 0 hands out nothing until it changes.
    """

    def __init__(self, rate: float, *, burst_s: float = 0.5) -> None:
        # Half a second of catch-up absorbs a stalled process or a slow patch of the api
        # without losing pace; pauses the bot chooses (Retry-After) call `restart` instead.
        self._rate = rate
        self._burst_s = burst_s
        # One token at the start: the first message goes at once, then the steady pace,
        # with no start-up burst.
        self._tokens = 1.0
        self._updated = anyio.current_time()
        self._closed = False
        self._lock = anyio.Lock()
        self._changed = anyio.Event()

    @property
    def rate(self) -> float:
        """Tokens per second handed out now."""
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the speed; a waiter recomputes its wait at once instead of sleeping it out."""
        if rate < 0:
            raise ValueError("rate must not be negative")
        self._refill()  # tokens earned so far were earned at the old rate
        self._rate = rate
        self._tokens = min(self._tokens, self._capacity())
        self._wake()

    def restart(self) -> None:
        """Forget tokens saved so far: one now, then the steady pace (posting starts now)."""
        self._refill()
        self._tokens = min(self._tokens, 1.0)

    def close(self) -> None:
        """Make every current and future `acquire` return False (shutting down)."""
        self._closed = True
        self._wake()

    async def acquire(self) -> bool:
        """Wait for a token and take it; False once the bucket is closed."""
        async with self._lock:
            while not self._closed:
                self._refill()
                if self._rate > 0 and self._tokens >= 1:
                    self._tokens -= 1
                    return True
                changed = self._changed
                if self._rate > 0:
                    # Sleep exactly until the next token is due; the fraction of a token
                    # earned by oversleeping stays in the bucket, so lateness does not add up.
                    with anyio.move_on_after((1 - self._tokens) / self._rate):
                        await changed.wait()
                else:
                    await changed.wait()
            return False

    def _capacity(self) -> float:
        return max(1.0, self._rate * self._burst_s)

    def _refill(self) -> None:
        now = anyio.current_time()
        self._tokens = min(self._capacity(), self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
