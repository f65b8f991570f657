"""The workers that post generated messages at the bucket's pace, honouring back pressure."""

from __future__ import annotations

import logging
import uuid

import anyio
import httpx

from bot.backpressure import Backpressure, parse_retry_after
from bot.content import MessageGenerator
from bot.pacing import TokenBucket
from bot.ratelimit import spent_wait
from bot.stats import Stats
from feedsvc.messages import encode

log = logging.getLogger("bot.poster")

_HEADERS = {"Content-Type": "application/json"}


class Poster:
    """Posts messages until told to stop or `count` messages are done with.

    Note: a message refused with 429/503/5xx or lost to a connection error is sent again,
    with the same `Idempotency-Key`, so a retry after a lost 202 is not stored twice. Every
    attempt takes a token: retries count against the rate like any other request.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        api_url: str,
        messages: MessageGenerator,
        bucket: TokenBucket,
        backpressure: Backpressure,
        stats: Stats,
        *,
        count: int | None = None,
    ) -> None:
        self._client = client
        self._url = f"{api_url}/messages"
        self._messages = messages
        self._bucket = bucket
        self._backpressure = backpressure
        self._stats = stats
        self._left = count
        self._probe = anyio.Lock()

    async def run(self, concurrency: int, stop: anyio.Event) -> None:
        """Post with `concurrency` workers; returns when `stop` is set or the count is done.

        Note: after `stop`, requests in flight finish (bounded by the client's timeout);
        waits for a token or for `Retry-After` end at once.
        """
        # Tokens saved during start-up or `--delay` would make a burst at the start.
        self._bucket.restart()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._close_on, stop)
            async with anyio.create_task_group() as workers:
                for _ in range(concurrency):
                    workers.start_soon(self._work, stop)
            tg.cancel_scope.cancel()

    async def _close_on(self, stop: anyio.Event) -> None:
        await stop.wait()
        self._bucket.close()

    async def _work(self, stop: anyio.Event) -> None:
        while not stop.is_set() and self._take_one():
            message = self._messages.next()
            await self._deliver(encode(message), stop)

    def _take_one(self) -> bool:
        if self._left is None:
            return True
        if self._left <= 0:
            return False
        self._left -= 1
        return True

    async def _deliver(self, body: bytes, stop: anyio.Event) -> None:
        headers = {**_HEADERS, "Idempotency-Key": str(uuid.uuid4())}
        while True:
            # Wait out back pressure before taking a token, and drop the tokens saved during
            # the pause, so the api that asked for it does not get a burst when it ends.
            if await self._backpressure.wait(stop):
                self._bucket.restart()
            if not await self._bucket.acquire():
                return  # stopping
            if self._backpressure.remaining > 0:
                continue  # another worker was told to wait while this one got its token
            if not self._backpressure.failing:
                if await self._attempt(body, headers):
                    return
                continue
            # While the api is unreachable one request at a time finds out whether it is
            # back, instead of every worker failing at once at the end of each backoff.
            async with self._probe:
                if self._backpressure.remaining > 0:
                    continue
                if await self._attempt(body, headers):
                    return

    async def _attempt(self, body: bytes, headers: dict[str, str]) -> bool:
        """One POST; True when the message is done with (accepted, or refused for good)."""
        stats = self._stats
        stats.sent += 1
        stats.in_flight += 1
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            stats.errors += 1
            delay = self._backpressure.failed()
            log.warning(
                "api unreachable", extra={"error": repr(exc), "retry_in_s": round(delay, 3)}
            )
            return False
        except Exception:
            # Not expected, but the bot must keep going: count it, back off, carry on.
            stats.errors += 1
            delay = self._backpressure.failed()
            log.exception("unexpected error while posting", extra={"retry_in_s": round(delay, 3)})
            return False
        finally:
            stats.in_flight -= 1
        self._backpressure.answered()
        status = response.status_code
        # The front door's per-address quota (docs/fair-share.md#the-headers): spent means
        # send nothing for its window, as a 429 would say one request later.
        spent = spent_wait(response.headers.get("RateLimit"))
        if 200 <= status < 300:
            stats.accepted += 1
            if spent is not None:
                self._backpressure.retry_after(spent)
                log.info("quota spent", extra={"status": status, "retry_after_s": spent})
            return True
        stats.rejected[status] += 1
        if status in (429, 503):
            wait = max(parse_retry_after(response.headers.get("Retry-After")), spent or 0.0)
            stats.retry_after_waits += 1
            stats.retry_after_s += wait
            self._backpressure.retry_after(wait)
            log.info("api asked to wait", extra={"status": status, "retry_after_s": wait})
            return False
        if status >= 500:
            delay = self._backpressure.failed()
            log.warning("api failed", extra={"status": status, "retry_in_s": round(delay, 3)})
            return False
        # 4xx other than 429: sending it again would not help. It is a bot bug (the
        # generator's messages are valid by construction), so say exactly what was refused.
        log.error(
            "message refused",
            extra={"status": status, "answer": response.text[:500], "body": body.decode()},
        )
        return True
