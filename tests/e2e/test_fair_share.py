"""Fair share at the front door: per-address limits and the client's real address.

Each client binds its own loopback source address (Linux routes all of 127.0.0.0/8), so
the proxy sees distinct clients. Guarantees: docs/fair-share.md.
"""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from devstack import Stack, free_port
from tests.e2e.conftest import native_stack
from tests.e2e.test_access import access_lines
from tests.support import native_only, wait_for

pytestmark = [pytest.mark.stack, native_only]

POST_RATE = 30
"""POSTs per address per 10 s in these tests (FEEDSVC_PROXY_POST_RATE)."""
POST_INFLIGHT = 2
"""POSTs per address in flight (FEEDSVC_PROXY_POST_INFLIGHT)."""
STREAMS = 3
"""Open feed streams per address (FEEDSVC_PROXY_STREAMS)."""
TRUSTED_XFF = "127.0.0.7"
"""A proxy in front of ours whose X-Forwarded-For is believed."""
TRUSTED_PROXY_PROTOCOL = "127.0.0.8"
"""A load balancer in front of ours whose PROXY protocol header is believed."""

INTERNAL_PORT = free_port()
"""The proxy's internal entrance, compose's bot's (FEEDSVC_PROXY_INTERNAL_BIND)."""


@pytest.fixture(scope="module")
def fair() -> Iterator[Stack]:
    """One stack with small per-address limits, and an api whose own in-flight limit a
    flood fills without them (so the polite client's 202s are the limits' doing)."""
    stack = native_stack(
        {
            "FEEDSVC_PROXY_POST_RATE": str(POST_RATE),
            "FEEDSVC_PROXY_POST_INFLIGHT": str(POST_INFLIGHT),
            "FEEDSVC_PROXY_STREAMS": str(STREAMS),
            "FEEDSVC_PROXY_TRUSTED_XFF": TRUSTED_XFF,
            "FEEDSVC_PROXY_TRUSTED_PROXY_PROTOCOL": TRUSTED_PROXY_PROTOCOL,
            "FEEDSVC_PROXY_INTERNAL_BIND": f"127.0.0.1:{INTERNAL_PORT}",
            "FEED_MAX_INFLIGHT": "3",
        }
    )
    try:
        yield stack
    finally:
        stack.down()
        shutil.rmtree(stack.root, ignore_errors=True)


@asynccontextmanager
async def client_from(stack: Stack, source: str, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose connections leave from `source`, a loopback address."""
    transport = httpx.AsyncHTTPTransport(local_address=source, **kw)
    async with httpx.AsyncClient(transport=transport, base_url=stack.api_url, timeout=30) as http:
        yield http


def post(author: str, text: str) -> dict[str, str]:
    return {"author": author, "text": text}


async def test_a_flood_from_one_address_leaves_another_its_posts(fair: Stack) -> None:
    """A 40-connection flood from one address gets 429s; a polite address gets only 202s."""
    flooder, polite = "f_" + uuid.uuid4().hex[:20], "p_" + uuid.uuid4().hex[:20]
    flood: list[httpx.Response] = []
    answers: list[int] = []
    # The flood lasts as long as the polite client posts, however slow the machine: this
    # test counts answers, not time.
    polite_done = anyio.Event()
    started = time.monotonic()

    async with (
        client_from(fair, "127.0.0.2", limits=httpx.Limits(max_connections=40)) as bad,
        client_from(fair, "127.0.0.3") as good,
    ):

        async def flood_worker() -> None:
            while not polite_done.is_set():
                flood.append(await bad.post("/messages", json=post(flooder, "flood")))

        async def polite_poster() -> None:
            await anyio.sleep(0.5)  # the flood is under way
            for _ in range(6):
                answers.append((await good.post("/messages", json=post(polite, "hi"))).status_code)
                await anyio.sleep(0.25)
            polite_done.set()

        async with anyio.create_task_group() as tasks:
            for _ in range(40):
                tasks.start_soon(flood_worker)
            tasks.start_soon(polite_poster)

    assert answers == [202] * 6, answers
    accepted = sum(1 for r in flood if r.status_code == 202)
    refused = [r for r in flood if r.status_code == 429]
    # The rate is counted over a sliding 10 s: a slow run may span more than one window.
    windows = 1 + int((time.monotonic() - started) // 10)
    assert accepted <= POST_RATE * windows + POST_INFLIGHT, (accepted, windows)
    assert len(refused) > 10 * accepted, (len(refused), accepted)
    one = refused[-1]
    assert int(one.headers["retry-after"]) >= 1
    assert one.json()["error"] == "too_many_requests"
    assert "from this address" in one.json()["detail"]
    assert one.headers["ratelimit"] in ('"posts";r=0;t=10', '"inflight";r=0;t=1')
    assert f'"posts";q={POST_RATE};w=10' in one.headers["ratelimit-policy"]


async def test_a_post_learns_its_remaining_quota(fair: Stack) -> None:
    """A passed POST carries RateLimit-Policy and RateLimit with what its address has left."""
    async with client_from(fair, "127.0.0.10") as http:
        first = await http.post("/messages", json=post("q_" + uuid.uuid4().hex[:8], "one"))
        second = await http.post("/messages", json=post("q_" + uuid.uuid4().hex[:8], "two"))
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.headers["ratelimit"] == f'"posts";r={POST_RATE - 1};t=10'
    assert second.headers["ratelimit"] == f'"posts";r={POST_RATE - 2};t=10'
    assert first.headers["ratelimit-policy"].startswith(f'"posts";q={POST_RATE};w=10')


async def test_one_address_past_its_stream_cap_is_refused_while_another_streams(
    fair: Stack,
) -> None:
    """Past STREAMS open streams an address gets 200 with a retry hint at once; others stream."""
    async with (
        client_from(fair, "127.0.0.4") as greedy,
        client_from(fair, "127.0.0.5") as other,
        held_streams(greedy, STREAMS) as held,
    ):
        assert all(r.status_code == 200 for r in held)
        with anyio.fail_after(5):  # an answer, never a hang
            refused = await greedy.get("/feed", params={"limit": 0})
        assert refused.status_code == 200
        assert refused.headers["content-type"].startswith("text/event-stream")
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.text.startswith("retry: 10000\n: too many streams")
        async with other.stream("GET", "/feed", params={"limit": 0}) as response:
            assert response.status_code == 200
            with anyio.fail_after(10):
                first = await anext(response.aiter_lines())
            assert first == "retry: 2000"


@asynccontextmanager
async def held_streams(http: httpx.AsyncClient, count: int) -> AsyncIterator[list[Any]]:
    """`count` feed streams held open by `http`, each past its first line."""
    async with anyio.create_task_group() as tasks:
        opened: list[httpx.Response] = []
        ready = anyio.Event()
        done = anyio.Event()

        async def hold() -> None:
            async with http.stream("GET", "/feed", params={"limit": 0}) as response:
                # Held in a name: an abandoned line iterator is closed, and the stream with it.
                lines = response.aiter_lines()
                assert await anext(lines) == "retry: 2000"
                opened.append(response)
                if len(opened) == count:
                    ready.set()
                await done.wait()

        for _ in range(count):
            tasks.start_soon(hold)
        with anyio.fail_after(10):
            await ready.wait()
        try:
            yield opened
        finally:
            done.set()


async def logged_client(stack: Stack, message_id: str) -> str:
    """The `client` of the access line of the POST that created `message_id`."""

    async def lines() -> list[dict[str, Any]]:
        return [x for x in access_lines(stack) if x.get("message_id") == message_id]

    [line] = await wait_for(lines, lambda found: len(found) == 1, 10, "the POST's access line")
    return str(line["client"])


async def test_an_untrusted_x_forwarded_for_is_ignored(fair: Stack) -> None:
    """A client's own X-Forwarded-For is replaced: the api logs the address that connected."""
    async with client_from(fair, "127.0.0.6") as http:
        r = await http.post(
            "/messages",
            json=post("x_" + uuid.uuid4().hex[:8], "spoof"),
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
    assert r.status_code == 202
    assert await logged_client(fair, r.json()["id"]) == "127.0.0.6"


async def test_a_trusted_x_forwarded_for_names_the_client(fair: Stack) -> None:
    """From a trusted proxy, the last X-Forwarded-For address is the client, in the api's log."""
    async with client_from(fair, TRUSTED_XFF) as http:
        r = await http.post(
            "/messages",
            json=post("x_" + uuid.uuid4().hex[:8], "forwarded"),
            headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"},
        )
    assert r.status_code == 202
    assert await logged_client(fair, r.json()["id"]) == "203.0.113.7"


def raw_post(stack: Stack, source: str, preface: bytes, author: str) -> bytes:
    """A POST sent on a raw socket from `source` after `preface`; the whole answer."""
    port = int(stack.api_url.rsplit(":", 1)[1])
    body = b'{"author":"%s","text":"proxied"}' % author.encode()
    request = (
        b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(preface + request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_the_proxy_protocol_is_believed_only_from_trusted_sources(fair: Stack) -> None:
    """A PROXY header names the client from a trusted balancer; from anyone else it is refused."""
    preface = b"PROXY TCP4 198.51.100.8 127.0.0.1 40000 8000\r\n"
    author = "x_" + uuid.uuid4().hex[:8]
    answer = await anyio.to_thread.run_sync(raw_post, fair, TRUSTED_PROXY_PROTOCOL, preface, author)
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
    message_id = answer.split(b"\r\n\r\n", 1)[1].split(b'"id":"', 1)[1].split(b'"', 1)[0]
    assert await logged_client(fair, message_id.decode()) == "198.51.100.8"
    spoofed = await anyio.to_thread.run_sync(raw_post, fair, "127.0.0.9", preface, author)
    assert spoofed.startswith(b"HTTP/1.1 400"), spoofed[:200]


async def test_the_internal_entrance_has_no_per_address_quota(fair: Stack) -> None:
    """Twice an address's quota, posted from one address to the internal entrance: all 202."""
    author = "b_" + uuid.uuid4().hex[:20]
    url = f"http://127.0.0.1:{INTERNAL_PORT}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as bot:
        answers = [
            (await bot.post("/messages", json=post(author, f"bot {i}"))).status_code
            for i in range(2 * POST_RATE + 5)
        ]
    assert answers == [202] * len(answers), answers
