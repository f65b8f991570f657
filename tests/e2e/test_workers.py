"""The api as several worker processes on one port (FEED_API_WORKERS, feedsvc/workers.py).

Which worker holds a connection is read from /proc: the worker process that owns the
server end of the TCP connection. Each test builds a stack of its own with two workers,
and talks to its replica directly, past the proxy: the sockets judged are the replica's.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack import Stack
from devstack.procs import pid_alive
from tests.support import SseReader, native_only, stored_ids, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.stack, native_only]

MakeStack = Callable[..., Stack]
WORKERS = {"FEED_API_WORKERS": "2"}
_ESTABLISHED, _LISTEN = "01", "0A"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def _sockets(port: int) -> dict[int, tuple[str, int]]:
    """inode -> (state, remote port) of every TCP socket whose local port is `port`."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == port:
                found[inode] = (state, int(remote.rsplit(":", 1)[1], 16))
    return found


def _owned(pid: int) -> set[int]:
    """The socket inodes `pid` has open."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _by_worker(pids: list[int], port: int, state: str) -> dict[int, set[int]]:
    """pid -> remote ports of its sockets on `port` in `state`."""
    sockets = _sockets(port)
    return {
        pid: {sockets[i][1] for i in _owned(pid) if i in sockets and sockets[i][0] == state}
        for pid in pids
    }


def _api_port(stack: Stack) -> int:
    return int(stack.replica_url().rsplit(":", 1)[1])


async def _workers_listening(stack: Stack, count: int) -> list[int]:
    """The api's worker pids once `count` of them listen on its port."""
    supervisor = stack.service("api").pid
    assert supervisor is not None

    async def listening() -> list[int]:
        pids = _children(supervisor)
        held = _by_worker(pids, _api_port(stack), _LISTEN)
        return [pid for pid in pids if held[pid]]

    return await wait_for(listening, lambda pids: len(pids) == count, 90, f"{count} listening")


def _local_port(response: httpx.Response) -> int:
    """The client-side port of the connection a response came on."""
    sock = response.extensions["network_stream"].get_extra_info("socket")
    return int(sock.getsockname()[1])


def _server_of(stack: Stack, workers: list[int], client_port: int) -> int:
    """The worker holding the server end of the connection from `client_port`."""
    held = _by_worker(workers, _api_port(stack), _ESTABLISHED)
    owners = [pid for pid in workers if client_port in held[pid]]
    assert len(owners) == 1, (client_port, held)
    return owners[0]


async def test_two_workers_share_the_port_and_each_serves(make_stack: MakeStack) -> None:
    """Connections spread over both workers; posts through either are stored once, and a
    feed stream on each worker gets every message once."""
    stack = make_stack(WORKERS)
    workers = await _workers_listening(stack, 2)
    author = "w_" + uuid.uuid4().hex[:20]
    streams: dict[int, SseReader] = {}
    posters: set[int] = set()
    posted: list[str] = []
    async with AsyncExitStack() as exits:
        # Feed streams until each worker holds one (the kernel picks by a hash of the ports).
        opened = 0
        for _ in range(40):
            opened += 1
            http = await exits.enter_async_context(
                httpx.AsyncClient(base_url=stack.replica_url(), timeout=30)
            )
            response = await exits.enter_async_context(http.stream("GET", "/feed?limit=0"))
            assert response.status_code == 200
            owner = _server_of(stack, workers, _local_port(response))
            if owner not in streams:
                reader = SseReader(response)
                await reader.next()  # the connection is subscribed once it sent something
                streams[owner] = reader
            if len(streams) == 2:
                break
        assert streams.keys() == set(workers), "40 connections all went to one worker"
        # Each post on a new connection, so both workers take some.
        for i in range(30):
            async with httpx.AsyncClient(base_url=stack.replica_url(), timeout=30) as one:
                r = await one.post("/messages", json={"author": author, "text": f"w {i}"})
                assert r.status_code == 202, r.text
                posted.append(r.json()["id"])
                posters.add(_server_of(stack, workers, _local_port(r)))
        assert posters == set(workers)
        for pid, reader in streams.items():
            ids: list[str] = []
            while len(ids) < len(posted):
                event = (await reader.messages(1, 60))[0]
                if event.event == "message" and event.json()["author"] == author:
                    ids.append(event.json()["id"])
            assert ids == posted, f"the stream on worker {pid}"
        # Whichever worker answers /metrics, it adds up both (prometheus-client's
        # multiprocess mode): 30 accepted, every stream opened above (gauges copied in each
        # second).
        scraped: set[int] = set()
        for _ in range(40):
            async with httpx.AsyncClient(base_url=stack.replica_url(), timeout=30) as one:
                r = await one.get("/metrics")
                assert r.status_code == 200
                scraped.add(_server_of(stack, workers, _local_port(r)))
                assert _sample(r.text, "feedsvc_posts_accepted_total") == len(posted)
            if scraped == set(workers):
                break
        assert scraped == set(workers), "40 scrapes all went to one worker"

        async def subscribers() -> float | None:
            async with httpx.AsyncClient(base_url=stack.replica_url(), timeout=30) as one:
                return _sample((await one.get("/metrics")).text, "feedsvc_feed_subscribers")

        await wait_for(subscribers, lambda n: n == opened, 30, "every worker's streams counted")
    await wait_for(
        lambda: stored_ids(stack, author), lambda ids: sorted(ids) == sorted(posted), 60, "stored"
    )


async def test_one_key_two_texts_on_two_workers_one_is_refused(make_stack: MakeStack) -> None:
    """An Idempotency-Key is bound to its first text across workers: the same key with two
    texts, posted at once through connections held by different workers, gets one 202 and
    one 422, and the text that got 202 is the one stored (none is lost)."""
    stack = make_stack(WORKERS)
    workers = await _workers_listening(stack, 2)
    author = "k_" + uuid.uuid4().hex[:20]
    async with AsyncExitStack() as exits:
        by_worker: dict[int, httpx.AsyncClient] = {}
        for _ in range(40):
            http = await exits.enter_async_context(
                httpx.AsyncClient(base_url=stack.replica_url(), timeout=30)
            )
            r = await http.get("/health")
            by_worker.setdefault(_server_of(stack, workers, _local_port(r)), http)
            if len(by_worker) == 2:
                break
        assert len(by_worker) == 2, "40 connections all went to one worker"
        one, two = by_worker.values()
        accepted: dict[str, str] = {}
        for n in range(10):
            key = f"key-{n}"
            answers: dict[str, httpx.Response] = {}

            async with anyio.create_task_group() as tg:
                tg.start_soon(_keyed_post, one, author, key, f"{key} first", answers)
                tg.start_soon(_keyed_post, two, author, key, f"{key} second", answers)
            statuses = sorted(r.status_code for r in answers.values())
            assert statuses == [202, 422], {t: r.text for t, r in answers.items()}
            won = next(t for t, r in answers.items() if r.status_code == 202)
            accepted[answers[won].json()["id"]] = won
        await wait_for(
            lambda: stored_ids(stack, author), lambda ids: set(ids) == set(accepted), 60, "stored"
        )
        for message_id, text in accepted.items():
            r = await one.get(f"/messages/{message_id}")
            assert r.status_code == 200 and r.json()["text"] == text


async def _keyed_post(
    http: httpx.AsyncClient, author: str, key: str, text: str, answers: dict[str, httpx.Response]
) -> None:
    body = {"author": author, "text": text}
    answers[text] = await http.post("/messages", json=body, headers={"Idempotency-Key": key})


def _sample(text: str, name: str) -> float | None:
    """The value of the unlabelled series `name` in a scrape."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return None


async def test_a_killed_worker_is_replaced_and_sigterm_stops_all(make_stack: MakeStack) -> None:
    """A worker killed with SIGKILL is replaced while the other serves on; then SIGTERM to the
    api stops the supervisor and every worker, exit status 0."""
    stack = make_stack(WORKERS)
    first, second = await _workers_listening(stack, 2)
    author = "w_" + uuid.uuid4().hex[:20]
    accepted: list[str] = []
    async with httpx.AsyncClient(base_url=stack.replica_url(), timeout=30) as http:
        os.kill(first, signal.SIGKILL)
        # The survivor answers meanwhile: a connection refused only where the dead one's
        # queue was (the kernel resets it), never for long.
        began = time.monotonic()
        while time.monotonic() - began < 3:
            try:
                r = await http.post("/messages", json={"author": author, "text": "during"})
            except httpx.TransportError:
                continue
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
        assert accepted
        workers = await _workers_listening(stack, 2)
        assert second in workers and first not in workers
    # SIGTERM to the supervisor alone (not its process group): it passes it on.
    api = stack.service("api")
    assert api.pid is not None
    began = time.monotonic()
    os.kill(api.pid, signal.SIGTERM)
    status = await anyio.to_thread.run_sync(api.wait_exit, 30.0)
    assert status == 0, api.log_tail()
    assert time.monotonic() - began < 15  # FEED_SHUTDOWN_GRACE_S is 3 in tests
    for pid in workers:
        assert not pid_alive(pid)
    await wait_for(
        lambda: stored_ids(stack, author), lambda ids: set(ids) >= set(accepted), 60, "stored"
    )
