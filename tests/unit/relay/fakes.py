"""A fake of the fan-out's clock (`relay.waits.Clock`): time moves only when a test says."""

from __future__ import annotations

from collections.abc import Callable


class FakeTimer:
    """A call the fake clock makes once its time comes, unless cancelled."""

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Starts at 0; `advance` moves it and makes the calls that came due, in time order."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []
        """Every call scheduled, cancelled or not."""

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object], /) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move the time on by `seconds`, making each due call at its own time."""
        end = self.now + seconds
        while due := [t for t in self.timers if not t.cancelled and t.when <= end]:
            timer = min(due, key=lambda t: t.when)
            timer.cancelled = True
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = end
