"""The bot's control endpoint: read and change the speed at runtime, read the counters.

`GET /rate`; `PUT /rate` with a number (per second), `{"rate": <per second>}` or
`{"reqs_per_min": <n>}`;
`GET /stats` the counters of the stats line. Chosen over a signal because it also works
from outside the container (a published port) and tells the caller what it set.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Annotated, Any

import anyio
import msgspec
import uvicorn
from anyio.abc import TaskStatus
from litestar import Litestar, Request, get, put
from litestar.exceptions import ValidationException

from bot.pacing import MAX_RATE, TokenBucket
from bot.stats import Snapshot, Stats

log = logging.getLogger("bot.control")

_Rate = Annotated[float, msgspec.Meta(ge=0, le=MAX_RATE)]
_PerMinute = Annotated[float, msgspec.Meta(ge=0, le=MAX_RATE * 60)]


class RateChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of `PUT /rate`: exactly one of the two speeds."""

    rate: _Rate | None = None
    reqs_per_min: _PerMinute | None = None


# A bare JSON number is a rate per second, so `curl -X PUT host:8001/rate -d 50` works.
_decode_change = msgspec.json.Decoder(_Rate | RateChange).decode
_SHAPE = '{"rate": <per second>} or {"reqs_per_min": <per minute>}'


class RateView(msgspec.Struct, frozen=True):
    """The body of `GET/PUT /rate`: the speed now, in both units."""

    rate: float
    reqs_per_min: float


def create_app(bucket: TokenBucket, stats: Stats) -> Litestar:
    """The control app, acting on this bot's bucket and reading its counters."""

    def view() -> RateView:
        return RateView(rate=bucket.rate, reqs_per_min=bucket.rate * 60)

    @get("/rate", sync_to_thread=False)
    def read_rate() -> RateView:
        return view()

    @put("/rate", status_code=200)
    async def change_rate(request: Request[Any, Any, Any]) -> RateView:
        try:
            change = _decode_change(await request.body())
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ValidationException(f"{exc}; send a number or {_SHAPE}") from None
        if isinstance(change, RateChange):
            if (change.rate is None) == (change.reqs_per_min is None):
                raise ValidationException(f"give exactly one speed: {_SHAPE}")
            rate = change.rate if change.rate is not None else change.reqs_per_min / 60  # type: ignore[operator]
        else:
            rate = change
        old = bucket.rate
        bucket.set_rate(rate)
        log.info("rate changed", extra={"from_rate": old, "to_rate": rate})
        return view()

    @get("/stats", sync_to_thread=False)
    def read_stats() -> Snapshot:
        return stats.snapshot(bucket.rate)

    # Neither OpenAPI pages nor Litestar's logging setup: the process owns its logging.
    return Litestar([read_rate, change_rate, read_stats], openapi_config=None, logging_config=None)


class _Server(uvicorn.Server):
    # uvicorn takes SIGINT/SIGTERM for itself while serving; the bot's composition root
    # owns the signals and stops this server by cancellation instead.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for the control endpoint (port 0 = any free port); OSError if taken.

    Note: binding here, not in uvicorn, turns a port in use into an error for the caller
    instead of uvicorn's `sys.exit`.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


async def serve(
    app: Litestar,
    sock: socket.socket,
    host: str,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `sock` until cancelled; reports the bound port once listening."""
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=1
    )
    server = _Server(config)

    async def run_shielded() -> None:
        # Shielded so that, on cancellation, uvicorn closes its sockets and connections
        # itself (it checks should_exit every 0.1 s) instead of dying mid-await.
        with anyio.CancelScope(shield=True):
            await server.serve(sockets=[sock])

    with sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_shielded)
            # The socket is listening already: a request made before uvicorn is up waits in
            # the backlog instead of being refused, so the port can be announced now.
            log.info("control listening", extra={"host": host, "port": port})
            task_status.started(port)
            try:
                await anyio.sleep_forever()
            finally:
                server.should_exit = True
