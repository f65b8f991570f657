"""Process metrics with `prometheus-client`: one registry per process, summed across workers.

Each process builds one `Metrics` (its own `CollectorRegistry`, never the client's global
one, so tests and several roles in one interpreter do not collide); its families (`http`,
`connections`, `posts`, `health`, `feed`, `writer`) are created on first use, so a
process exposes only what it runs (their metrics, names and labels:
`feedsvc.metrics.families`). `render` is the `/metrics` body.

Several api workers add up through the client's multiprocess mode
(https://prometheus.github.io/client_python/multiprocess/): the launcher calls
`prepare_multiprocess(directory)` before starting the workers and `worker_exited(pid)`
when one ends; every worker then writes its values to files in that directory and
whichever worker is scraped renders the sum of all of them. Without it (the variable
`PROMETHEUS_MULTIPROC_DIR` unset) each process renders its own registry.

Values kept elsewhere (the admission's in-flight count, the relay's counts) are copied
in by `refresh`, on a one-second timer (`refresh_every`) and before each render:
multiprocess mode has no callback gauges, and a plain int on the hot path costs less
than a metric update per event.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cached_property
from pathlib import Path

import anyio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics import disable_created_metrics

from feedsvc.metrics.families import (
    ConnectionMetrics,
    FeedMetrics,
    HealthMetrics,
    HttpMetrics,
    PostMetrics,
    WriterMetrics,
)
from feedsvc.metrics.port import serving

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REFRESH_S = 1.0
"""How stale another worker's gauges may be in a scrape (multiprocess mode)."""


def prepare_multiprocess(directory: str | os.PathLike[str]) -> None:
    """Make this process and every worker it starts from now on share metrics in `directory`.

    Call it in the launcher before starting the workers: it creates `directory` or
    deletes the client's files (`*.db`) in it (values of an earlier run would be added
    to this one's), sets `PROMETHEUS_MULTIPROC_DIR` for the children, and switches this
    process's metric values to that directory too (a forked child inherits the switch;
    a spawned one reads the variable).

    Note: each worker builds its `Metrics` after this call; one built before it keeps
    its values to itself.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    # The client picks its value class when it is imported; metrics made after this
    # line, here or in a forked child, write to the directory.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def worker_exited(pid: int) -> None:
    """Forget the gauges of worker `pid`, which ended (its counters and histograms stay).

    Note: call it from the launcher whenever a worker ends, or the live gauges (open
    streams, in-flight posts) keep counting a worker that is gone.
    """
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    """The shared directory when metrics are summed across processes, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The metrics of one process; `render` is its Prometheus text exposition."""

    def __init__(self) -> None:
        # `_created` series exist only in single-process mode; without them the two modes
        # expose the same series.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self._refreshers: list[Callable[[], None]] = []

    @cached_property
    def http(self) -> HttpMetrics:
        """Request durations of the api (every route but the endless `/feed`)."""
        return HttpMetrics(self.registry)

    @cached_property
    def connections(self) -> ConnectionMetrics:
        """The api's connections: open, refused past the cap, cut by a limit."""
        return ConnectionMetrics(self.registry)

    @cached_property
    def posts(self) -> PostMetrics:
        """`POST /messages` outcomes and Kafka send errors."""
        return PostMetrics(self.registry)

    @cached_property
    def health(self) -> HealthMetrics:
        """What the api can serve now."""
        return HealthMetrics(self.registry)

    @cached_property
    def feed(self) -> FeedMetrics:
        """The relay and `/feed` streams."""
        return FeedMetrics(self.registry)

    @cached_property
    def writer(self) -> WriterMetrics:
        """The writer: batches, inserts, retries, dead letters."""
        return WriterMetrics(self.registry)

    def follow(self, gauge: Gauge, read: Callable[[], float | None]) -> None:
        """Set `gauge` to `read()` at each refresh (None leaves it as it was)."""

        def refresh() -> None:
            value = read()
            if value is not None:
                gauge.set(value)

        self._refreshers.append(refresh)

    def count(self, counter: Counter, read: Callable[[], int]) -> None:
        """Keep `counter` equal to a running total `read()` kept elsewhere (it only grows)."""
        last = 0

        def refresh() -> None:
            nonlocal last
            now = read()
            if now > last:
                counter.inc(now - last)
            last = now

        self._refreshers.append(refresh)

    def refresh(self) -> None:
        """Copy every followed value in now."""
        for refresh in self._refreshers:
            refresh()

    async def refresh_every(self, seconds: float = REFRESH_S) -> None:
        """Refresh until cancelled: what other workers render of this one is this fresh."""
        while True:
            self.refresh()
            await anyio.sleep(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition: this process's, or every worker's summed."""
        self.refresh()
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        # A fresh registry per scrape, as the client's docs say: registering the collector
        # in a registry that also holds the metrics would expose them twice.
        summed = CollectorRegistry()
        multiprocess.MultiProcessCollector(summed, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(summed)

    @asynccontextmanager
    async def served(
        self, host: str, port: int, ready: Callable[[], bool] = lambda: True
    ) -> AsyncIterator[None]:
        """Serve `/metrics`, `/health/live` and `/health/ready` (200 while `ready()`, else
        503) on `http://host:port` meanwhile; port 0: not at all.

        Note: for a process without an HTTP server of its own (the writer); answered from
        a thread (`feedsvc.metrics.port`), so the event loop never waits for a scrape.
        """
        if not port:
            yield
            return
        with serving(host, port, self.render, ready):
            yield
