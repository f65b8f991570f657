"""`python -m bot`: post realistic messages to feedsvc at a speed that can change while it runs."""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import Mapping, Sequence

import anyio
import httpx
import msgspec
from anyio import CancelScope
from anyio.abc import TaskStatus

from bot import control
from bot.backpressure import Backpressure
from bot.config import ConfigError, Settings, load_settings
from bot.content import MessageGenerator
from bot.pacing import TokenBucket
from bot.poster import Poster
from bot.stats import Stats, log_line, report
from feedsvc.logs import configure_logging

log = logging.getLogger("bot")

GRACE_S = 5.0
"""Seconds requests in flight get after a stop; below compose's default 10 s stop grace."""


async def run(
    settings: Settings,
    control_socket: socket.socket,
    stop: anyio.Event,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Post until `stop` is set or the count or duration is done; then finish what is in flight."""
    seed = settings.seed if settings.seed is not None else random.SystemRandom().getrandbits(32)
    log.info("bot starting", extra={**msgspec.structs.asdict(settings), "seed": seed})
    bucket = TokenBucket(settings.rate)
    stats = Stats()
    limits = httpx.Limits(
        max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
    )
    async with (
        httpx.AsyncClient(timeout=settings.timeout, limits=limits) as client,
        anyio.create_task_group() as tg,
    ):
        poster = Poster(
            client,
            settings.api_url,
            MessageGenerator(seed, settings.authors),
            bucket,
            Backpressure(),
            stats,
            count=settings.count,
        )
        app = control.create_app(bucket, stats)
        await tg.start(control.serve, app, control_socket, settings.control_host)
        tg.start_soon(report, stats, bucket, settings.stats_interval, settings.concurrency)
        tg.start_soon(_cut_short, stop, tg.cancel_scope)
        task_status.started()
        with anyio.move_on_after(settings.delay):
            await stop.wait()
        if settings.duration is not None:
            tg.start_soon(_set_after, stop, settings.duration)
        await poster.run(settings.concurrency, stop)
        tg.cancel_scope.cancel()
    log_line(stats, bucket, "bot stopped")


async def _set_after(stop: anyio.Event, seconds: float) -> None:
    await anyio.sleep(seconds)
    log.info("duration reached", extra={"duration": seconds})
    stop.set()


async def _cut_short(stop: anyio.Event, scope: CancelScope) -> None:
    await stop.wait()
    await anyio.sleep(GRACE_S)
    log.warning("requests still in flight after the grace period; abandoning them")
    scope.cancel()


async def _main(settings: Settings) -> None:
    # Bound before anything starts, so a port in use is a plain error at start.
    control_socket = control.bind(settings.control_host, settings.control_port)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, stop, tg.cancel_scope)
        await run(settings, control_socket, stop)
        tg.cancel_scope.cancel()


async def _stop_on_signals(stop: anyio.Event, scope: CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if stop.is_set():  # a second signal: the operator does not want to wait
                scope.cancel()
                return
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            stop.set()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the bot; the exit code is 0 after a stop, 2 for bad settings, 1 if it cannot start."""
    try:
        settings = load_settings(
            sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ
        )
    except ConfigError as exc:
        print(f"python -m bot: error: {exc}", file=sys.stderr)
        return 2
    # The same line format as feedsvc's processes, so one query reads all their logs.
    configure_logging(settings.log_level, "bot")
    # httpx logs every request at INFO; the stats line already sums them up.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        # uvloop (with uvicorn[standard]) spends less CPU per request, which is what caps
        # the rate one bot reaches; plain asyncio where it is missing.
        uvloop = importlib.util.find_spec("uvloop") is not None
        anyio.run(_main, settings, backend_options={"use_uvloop": uvloop})
    except OSError as exc:
        log.error(
            "cannot listen for control",
            extra={"host": settings.control_host, "port": settings.control_port, "error": str(exc)},
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
