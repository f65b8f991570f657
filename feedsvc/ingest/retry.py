"""Waiting out an outage of the database or of Kafka without ever skipping a record."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_DELAY_S = 0.05
MAX_DELAY_S = 2.0


class BatchAbandoned(Exception):
    """The writer was told to stop during an outage; the batch stays uncommitted."""


async def until_done(
    attempt: Callable[[], Awaitable[T]],
    retriable: Callable[[Exception], bool],
    stopping: anyio.Event,
    what: str,
    timeout_s: float | None = None,
    on_retry: Callable[[str], None] | None = None,
    **context: object,
) -> T:
    """Call `attempt` until it succeeds, backing off (0.05 s doubling to 2 s) between tries.

    Note: an error that is not retriable is raised at once. Once `stopping` is set the
    outage gets about 1.5 s more, then `BatchAbandoned` is raised: the caller leaves
    its batch uncommitted, so whoever owns the partitions next handles it; nothing is
    skipped. `timeout_s` bounds each attempt (a send to a down broker waits forever);
    `on_retry(what)` is called (e.g. to count it) and `context` logged with each retry.
    """
    delay = FIRST_DELAY_S
    while True:
        try:
            if timeout_s is None:
                return await attempt()
            with anyio.fail_after(timeout_s):
                return await attempt()
        except Exception as exc:
            if not retriable(exc):
                raise
            if stopping.is_set() and delay >= 1:
                raise BatchAbandoned(what) from exc
            if on_retry is not None:
                on_retry(what)
            log.warning(
                f"{what} failed, retrying",
                extra={"error": repr(exc), "retry_in_s": delay, **context},
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
