"""GET /feed over real HTTP: history, live, resume, repeats, heartbeats, slow clients.

Guarantees: ARCHITECTURE.md#no-gaps, ARCHITECTURE.md#slow-clients.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from devstack import Service, Stack, free_port
from tests.support import (
    SseEvent,
    SseReader,
    extra_api,
    native_only,
    post_many,
    stored_ids,
    wait_for,
)


@asynccontextmanager
async def open_feed(
    base_url: str,
    params: dict[str, str | int] | None = None,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncHTTPTransport | None = None,
) -> AsyncIterator[SseReader]:
    """A feed stream as a browser would hold it open."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30, transport=transport) as http,
        http.stream("GET", "/feed", params=params, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SseReader(response)


def ids_of(events: list[SseEvent]) -> list[str]:
    return [e.json()["id"] for e in events if e.event == "message"]


async def quiet_for(sse: SseReader, seconds: float) -> list[SseEvent]:
    """Every non-comment event that arrives within `seconds`."""
    got: list[SseEvent] = []
    with anyio.move_on_after(seconds):
        while (event := await sse.next(seconds + 1)) is not None:
            if event.event != "comment":
                got.append(event)
    return got


async def test_history_then_live_each_once(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """The latest N oldest-to-newest, then live messages in changefeed order, none twice."""
    history = await post_many(client, author, 5, "old")
    await wait_for(lambda: stored_ids(stack, author), lambda ids: len(ids) == 5, 20, "history")
    async with open_feed(stack.api_url, {"limit": 5}) as sse:
        assert ids_of(await sse.messages(5)) == history
        assert sse.retry_ms is not None
        live = await post_many(client, author, 6, "new")
        got = await sse.messages(6)
        assert ids_of(got) == live
        assert [e.json()["text"] for e in got] == [f"new {i}" for i in range(6)]
        # The stand-in re-sends rows (at-least-once); none may reach the client twice.
        assert ids_of(await quiet_for(sse, 1.5)) == []


async def test_ids_resume_across_a_second_replica(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """Reconnecting to another api process with Last-Event-ID gives exactly the missed events."""
    async with open_feed(stack.api_url, {"limit": 0}) as sse:
        first = await post_many(client, author, 4, "a")
        assert ids_of(await sse.messages(2)) == first[:2]
        last = sse.last_id
    assert last is not None
    more = await post_many(client, author, 3, "b")
    with extra_api(stack) as replica:
        async with open_feed(replica, headers={"Last-Event-ID": last}) as sse:
            assert ids_of(await sse.messages(5)) == first[2:] + more
            assert ids_of(await quiet_for(sse, 1)) == []
        # The query parameter serves clients that cannot set headers.
        async with open_feed(replica, {"last_event_id": last}) as sse:
            assert ids_of(await sse.messages(5)) == first[2:] + more


async def test_resume_after_api_restart(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """An id handed out before the api restarted still resumes with no gap."""
    async with open_feed(stack.api_url, {"limit": 0}) as sse:
        before = await post_many(client, author, 2, "before")
        await sse.messages(2)
        last = sse.last_id
    assert last is not None
    stack.service("api").terminate(15)
    with extra_api(stack) as other:
        # Posted while the main api is down, through another replica.
        async with httpx.AsyncClient(base_url=other) as http:
            during = await post_many(http, author, 3, "during")
    stack.up()
    async with open_feed(stack.api_url, headers={"Last-Event-ID": last}) as sse:
        assert ids_of(await sse.messages(3)) == during
    assert len(before) == 2


async def test_handoff_under_concurrent_posts(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """Clients connecting while posts stream in see every later message once, in order."""
    posted: list[str] = []
    done = anyio.Event()

    async def keep_posting() -> None:
        n = 0
        while not done.is_set():
            r = await client.post("/messages", json={"author": author, "text": f"flow {n}"})
            assert r.status_code == 202
            posted.append(r.json()["id"])
            n += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_posting)
        for _ in range(4):
            await wait_for(_count_of(posted), lambda n: n >= 5, 10, "some posts")
            mark = len(posted)
            async with open_feed(stack.api_url, {"limit": 50}) as sse:
                await anyio.sleep(1)
                target = posted[mark + 3] if len(posted) > mark + 3 else None
                seen: list[str] = []
                while target is None or target not in seen:
                    event = await sse.next(20)
                    assert event is not None
                    if event.event == "message" and event.json()["author"] == author:
                        seen.append(event.json()["id"])
                    if target is None and len(posted) > mark + 3:
                        target = posted[mark + 3]
                assert len(seen) == len(set(seen)), "a message was delivered twice"
                after_connect = posted[mark : posted.index(target) + 1]
                assert [i for i in seen if i in set(after_connect)] == after_connect
        done.set()


async def test_heartbeat_on_idle_feed(stack: Stack) -> None:
    """An idle feed carries a comment heartbeat (FEED_HEARTBEAT_S is 1 s in tests)."""
    async with open_feed(stack.api_url, {"limit": 0}) as sse:
        with anyio.fail_after(5):
            while (event := await sse.next()) is not None and event.event != "comment":
                pass
        assert event is not None and event.data == "ping"


async def test_unknown_position_resets_then_history(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """A Last-Event-ID this feed cannot serve gets an explicit `reset`, then history."""
    mine = await post_many(client, author, 2)
    await wait_for(lambda: stored_ids(stack, author), lambda ids: len(ids) == 2, 20, "rows")
    async with open_feed(stack.api_url, {"limit": 1}) as sse:
        events = await sse.messages(1)
        real = sse.last_id
    assert real is not None and "-" in real
    offset = real.split("-")[0]
    reasons = {f"{offset}-00000000": "the topic was recreated", "garbage": "unknown position"}
    for bogus, reason in reasons.items():
        async with open_feed(stack.api_url, {"limit": 2}, {"Last-Event-ID": bogus}) as sse:
            reset, *history = await sse.messages(3)
            assert reset.event == "reset"
            assert reason in reset.json()["reason"]
            assert ids_of(history) == mine
    assert ids_of(events) == mine[-1:]


async def test_feed_never_answers_an_error_status(stack: Stack) -> None:
    """Over the subscriber limit the feed answers 200 with a retry hint, not 429/503."""
    with extra_api(stack, FEED_MAX_SUBSCRIBERS="1") as replica:
        async with open_feed(replica, {"limit": 0}):
            async with httpx.AsyncClient(base_url=replica, timeout=10) as http:
                r = await http.get("/feed")
            assert r.status_code == 200
            assert "retry: " in r.text


async def test_slow_client_is_cut_and_resumes_without_gap(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """A client that stops reading is disconnected; others keep up; it resumes with no gap."""
    # A tiny receive window makes the stalled client's socket fill after a few frames.
    stalled = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    small = {"FEED_SUBSCRIBER_BUFFER": "20", "FEED_RING_SIZE": "5000", "FEED_SOCKET_SNDBUF": "8192"}
    with extra_api(stack, **small) as replica:
        async with (
            open_feed(replica, {"limit": 0}) as healthy,
            open_feed(replica, {"limit": 0}, transport=stalled) as slow,
        ):
            posted: list[str] = []
            got: list[SseEvent] = []

            async def read_healthy() -> None:
                got.extend(await healthy.messages(1200, within=120))

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_healthy)
                async with anyio.create_task_group() as posters:
                    for k in range(8):
                        posters.start_soon(_post_into, client, author, 150, f"w{k}", posted)
            assert sorted(ids_of(got)) == sorted(posted)
            order = ids_of(got)
            # Now the stalled client reads what reached it: a prefix, then the cut.
            seen: list[str] = []
            with anyio.move_on_after(30):  # bounded: a stream never cut would run forever
                try:
                    while (event := await slow.next(10)) is not None:
                        if event.event == "message":
                            seen.append(event.json()["id"])
                except httpx.RemoteProtocolError:
                    pass  # the server dropped it mid-chunk: that is the cut
            assert len(seen) < len(order), "the stalled client was never cut off"
            assert seen == order[: len(seen)]
            resume_from = slow.last_id
        headers = {"Last-Event-ID": resume_from} if resume_from else None
        async with open_feed(replica, {"limit": 0}, headers) as again:
            rest = await again.messages(len(order) - len(seen), within=60)
            assert ids_of(rest) == order[len(seen) :]


async def test_lagging_client_that_still_reads_is_told_to_resume(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """A client that falls behind but whose socket can still take data is cut with a final
    `resume` event naming where to resume; resuming there loses nothing."""
    small_window = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
    )
    small = {"FEED_SUBSCRIBER_BUFFER": "20", "FEED_RING_SIZE": "5000", "FEED_SOCKET_SNDBUF": "8192"}
    with extra_api(stack, **small) as replica:
        posted: list[str] = []
        seen: list[SseEvent] = []
        async with open_feed(replica, {"limit": 0}, transport=small_window) as slow:

            async def fall_behind_then_read() -> None:
                # Not reading while posts stream in fills the sockets and the server's write
                # buffer (~90 KiB in all): the server's write blocks and the client lags.
                async with httpx.AsyncClient(base_url=replica) as http:
                    await wait_for(
                        lambda: _gauge(http, "feedsvc_feed_lag_cuts_total"),
                        lambda n: n >= 1,
                        120,
                        "the client to be found lagging",
                    )
                with anyio.fail_after(60):
                    while (event := await slow.next(30)) is not None:
                        if event.event != "comment":
                            seen.append(event)

            async with anyio.create_task_group() as tg:
                tg.start_soon(fall_behind_then_read)
                async with anyio.create_task_group() as posters:
                    for k in range(8):
                        posters.start_soon(_post_into, client, author, 125, f"s{k}", posted)
        kinds = [e.event for e in seen]
        assert kinds and kinds[-1] == "resume", f"no resume at the end: {kinds[-3:]}"
        assert set(kinds[:-1]) == {"message"}
        resume_from = seen[-1].json()["last_event_id"]
        assert resume_from == seen[-1].id
        got = ids_of(seen[:-1])
        assert len(got) < len(posted), "the client was never cut"
        async with open_feed(replica, {"limit": 0}, {"Last-Event-ID": resume_from}) as again:
            rest = ids_of(await again.messages(len(posted) - len(got), within=60))
        mine = [i for i in got + rest if i in set(posted)]
        assert sorted(mine) == sorted(posted) and len(mine) == len(set(mine))


async def _gauge(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(value)


async def test_disconnected_clients_are_released_at_once(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    """500 idle streams whose clients vanish together leave the subscribers gauge within 1 s."""
    subscribers = "feedsvc_feed_subscribers"
    base = await _gauge(client, subscribers)
    host, port = stack.api_url.removeprefix("http://").split(":")
    request = f"GET /feed?limit=0 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    sockets: list[socket.socket] = []
    try:
        for _ in range(500):  # plain sockets: the clients cost the test nothing while idle
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(request)
            sockets.append(sock)
        await wait_for(
            lambda: _gauge(client, subscribers), lambda n: n >= base + 500, 60, "500 streams"
        )
    finally:
        for sock in sockets:
            sock.close()
    closed = anyio.current_time()
    await wait_for(lambda: _gauge(client, subscribers), lambda n: n <= base, 5, "release")
    assert anyio.current_time() - closed < 1.0, "subscriptions outlived their connections"


def _count_of(items: list[str]) -> Callable[[], Awaitable[int]]:
    async def count() -> int:
        return len(items)

    return count


async def _post_into(
    client: httpx.AsyncClient, author: str, count: int, prefix: str, into: list[str]
) -> None:
    into.extend(await post_many(client, author, count, prefix))


@native_only  # the burst is the stand-in's SIGUSR1
async def test_duplicate_burst_never_reaches_clients(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """A changefeed restart re-sends rows (SIGUSR1 to the stand-in); clients see each once."""
    async with open_feed(stack.api_url, {"limit": 0}) as sse:
        mine = await post_many(client, author, 5)
        assert ids_of(await sse.messages(5)) == mine
        standin = stack.service("changefeed")
        assert standin.pid is not None
        os.kill(standin.pid, signal.SIGUSR1)
        assert ids_of(await quiet_for(sse, 2)) == []


@native_only  # freezes the stand-in
async def test_history_is_never_sent_again_live_or_after_a_resume(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """Messages in the history whose changefeed records land after the history's position
    reach no client again: not live, not on a resume from the history's id on any replica."""
    standin = stack.service("changefeed")
    assert standin.pid is not None
    os.kill(standin.pid, signal.SIGSTOP)  # committed, but not in the topic yet
    try:
        held = await post_many(client, author, 3, "held")
        await wait_for(lambda: stored_ids(stack, author), lambda ids: len(ids) == 3, 20, "rows")
        async with open_feed(stack.api_url, {"limit": 3}) as live:
            assert ids_of(await live.messages(3)) == held
            history_id = live.last_id
            assert history_id is not None
            os.kill(standin.pid, signal.SIGCONT)  # the held records land after the position
            after = await post_many(client, author, 2, "after")
            assert ids_of(await live.messages(2)) == after
    finally:
        os.kill(standin.pid, signal.SIGCONT)
    with extra_api(stack) as replica:
        for url in (stack.api_url, replica):
            async with open_feed(url, headers={"Last-Event-ID": history_id}) as sse:
                assert ids_of(await sse.messages(2)) == after
                assert ids_of(await quiet_for(sse, 1)) == []


@native_only  # deletes and recreates the topic of its own stack
@pytest.mark.slow
async def test_recreated_topic_resets_streams_and_the_api_lives_on(
    make_stack: Callable[..., Stack], author: str
) -> None:
    """`messages.committed` recreated under a running api: open streams get `reset` ("the
    topic was recreated"), then new messages; the api keeps serving."""
    own = make_stack()
    async with httpx.AsyncClient(base_url=own.api_url, timeout=30) as http:
        async with open_feed(own.api_url, {"limit": 0}) as sse:
            before = await post_many(http, author, 3, "before")
            assert ids_of(await sse.messages(3)) == before
            admin = AIOKafkaAdminClient(bootstrap_servers=own.kafka_bootstrap)
            await admin.start()
            try:
                await admin.delete_topics(["messages.committed"])
                with anyio.fail_after(30):
                    while True:
                        try:
                            await admin.create_topics([NewTopic("messages.committed", 1, 1)])
                            break
                        except KafkaError:  # the deletion is still going on
                            await anyio.sleep(0.5)
            finally:
                await admin.close()
            reset = await sse.messages(1, within=60)
            assert reset[0].event == "reset"
            assert reset[0].json()["reason"] == "the topic was recreated"
            after = await post_many(http, author, 2, "after")
            got = await sse.messages(2, within=60)
            assert ids_of(got) == after
        assert (await http.get("/health/live")).status_code == 200


async def test_pagination_walks_everything_while_posts_arrive(
    client: httpx.AsyncClient, stack: Stack, author: str
) -> None:
    """Following `next` visits every message once, even while new ones are posted."""
    mine = set(await post_many(client, author, 30, "page"))
    await wait_for(lambda: stored_ids(stack, author), lambda ids: len(ids) == 30, 20, "rows")
    seen: list[str] = []
    cursor: str | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(post_many, client, author + "x", 20, "noise")
        while True:
            params: dict[str, str | int] = {"limit": 50}
            if cursor:
                params["before"] = cursor
            page = (await client.get("/messages", params=params)).json()
            seen += [m["id"] for m in page["items"]]
            cursor = page["next"]
            if cursor is None:
                break
    assert len(seen) == len(set(seen)), "a message was listed twice"
    assert mine <= set(seen), "a message was skipped"
    bad = await client.get("/messages", params={"before": "not-a-cursor"})
    assert (bad.status_code, bad.json()["field"]) == (400, "before")
    assert (await client.get("/messages", params={"limit": 0})).status_code == 400
    assert (await client.get("/messages", params={"limit": 1001})).status_code == 400


async def test_shutdown_ends_streams_with_resume(stack: Stack) -> None:
    """SIGTERM: open streams get a final `resume` event and end; the api exits 0 at once."""
    port = free_port()
    api = Service(
        "api-sigterm",
        [sys.executable, "-m", "feedsvc", "api"],
        {**stack.env(), "FEED_PORT": str(port)},
        stack.root / "logs" / "api-sigterm.log",
    )
    api.start()
    try:
        url = f"http://127.0.0.1:{port}"
        api.wait_http_ok(f"{url}/health/ready", 60)
        async with open_feed(url, {"limit": 0}) as sse:
            first = await sse.next(5)  # the heartbeat: the stream is subscribed
            assert first is not None and first.event == "comment"
            started = anyio.current_time()
            assert api.pid is not None
            os.kill(api.pid, signal.SIGTERM)
            events = await quiet_for(sse, 5)
            assert [e.event for e in events] == ["resume"]
            assert anyio.current_time() - started < 4
        assert await anyio.to_thread.run_sync(api.wait_exit, 10.0) == 0
    finally:
        api.terminate(5)
