"""Watching one of the api's `/metrics` gauges on a thread while a scenario runs."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from bench.stack import metrics


class GaugeWatch:
    """Calls `read(url)` every `every_s` seconds on a thread; keeps the maximum it saw.

    `reads` counts the reads and `failed` those that found no value (`/metrics` slow, the
    api down, or the gauge not exposed); `max` stays None when none found one.
    """

    def __init__(self, url: str, read: Callable[[str], float | None], every_s: float) -> None:
        self.url = url
        self.max: int | None = None
        self.reads = 0
        self.failed = 0
        self._read = read
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GaugeWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            value = self._read(self.url)
            self.reads += 1
            if value is None:
                self.failed += 1
            else:
                self.max = max(self.max or 0, int(value))


def gauge(name: str) -> Callable[[str], float | None]:
    """A reader of the gauge `name` summed over its labels (None when the api has none).

    Note: only `name` itself or `name{...}`, not `name_max` or `name_total` beside it.
    """
    sample = re.compile(rf"^{re.escape(name)}(\{{.*)?$")

    def read(url: str) -> float | None:
        found = [v for k, v in metrics(url).items() if sample.match(k)]
        return sum(found) if found else None

    return read


class BacklogWatch(GaugeWatch):
    """The writer's backlog (`feedsvc_writer_backlog`), every half second."""

    def __init__(self, url: str) -> None:
        super().__init__(url, gauge("feedsvc_writer_backlog"), 0.5)
