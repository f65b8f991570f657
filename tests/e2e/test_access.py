"""Access logs of the running api: one JSON line per request, one per feed connection."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from devstack import Stack
from tests.support import SseReader, log_of, native_only, wait_for

# The api's log file is the native stack's; the cockroach backend's api logs the same way.
pytestmark = native_only


def access_lines(stack: Stack) -> list[dict[str, Any]]:
    lines = []
    for raw in log_of(stack, "api").read_text(errors="replace").splitlines():
        if raw.startswith("{") and '"feedsvc.access"' in raw:
            lines.append(json.loads(raw))
    return lines


async def test_post_is_logged_with_its_message_id(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """A 202 gets one line with method, path, status, duration and the new message's id."""
    r = await client.post("/messages", json={"author": author, "text": "logged"})
    assert r.status_code == 202
    message_id = r.json()["id"]

    async def mine() -> list[dict[str, Any]]:
        return [x for x in access_lines(stack) if x.get("message_id") == message_id]

    [line] = await wait_for(mine, lambda found: len(found) == 1, 10, "the POST's access line")
    assert (line["method"], line["path"], line["status"]) == ("POST", "/messages", 202)
    assert line["msg"] == "request" and line["duration_ms"] >= 0


async def test_feed_connection_is_one_line_when_it_ends(stack: Stack) -> None:
    """A feed stream that carried several events is logged once, when it closes."""

    async def feeds() -> list[dict[str, Any]]:
        return [x for x in access_lines(stack) if x["path"] == "/feed"]

    before = len(await feeds())
    opened = time.monotonic()
    async with (
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
        http.stream("GET", "/feed", params={"limit": 3}) as response,
    ):
        sse = SseReader(response)
        events = [await sse.next(10) for _ in range(5)]  # history, then heartbeats
        assert all(e is not None for e in events)
        assert len(await feeds()) == before, "logged before the stream ended"
    held_ms = (time.monotonic() - opened) * 1000
    after = await wait_for(feeds, lambda found: len(found) > before, 10, "the feed's line")
    assert len(after) == before + 1
    assert after[-1]["status"] == 200 and after[-1]["duration_ms"] >= held_ms * 0.5
