"""Crash, outage and shutdown drills on real processes.

Guarantees: ARCHITECTURE.md#accepted-means-durable, ARCHITECTURE.md#back-pressure,
ARCHITECTURE.md#graceful-shutdown.

Each drill but the 40001 one builds its own stack with `make_stack`, so stopping a
broker, the database or a process never disturbs another test.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from devstack import Stack
from tests.e2e.posting import Poster
from tests.support import log_of, native_only, stored_ids, wait_for

# Every drill stops or freezes a server, kills a process of a stack of its own, or
# runs PostgreSQL-only SQL (plpgsql triggers, ALTER SYSTEM, pg_stat_activity).
pytestmark = [pytest.mark.slow, pytest.mark.stack, native_only]

MakeStack = Callable[..., Stack]


def _author() -> str:
    return "d_" + uuid.uuid4().hex[:20]


def _const(f: Callable[[Any], int], arg: Any) -> Callable[[], Any]:
    async def probe() -> int:
        return f(arg)

    return probe


async def all_stored(
    stack: Stack, author: str, accepted: list[str], within: float, *, exact: bool = True
) -> None:
    """Every accepted id ends up stored, once; with `exact`, nothing else is stored."""
    wanted = set(accepted)
    assert len(wanted) == len(accepted), "the api returned an id twice"

    async def missing() -> int:
        return len(wanted - set(await stored_ids(stack, author)))

    await wait_for(missing, lambda n: n == 0, within, f"all {len(wanted)} accepted ids (missing)")
    ids = await stored_ids(stack, author)
    assert len(ids) == len(set(ids)), "a message was stored twice"
    if exact:
        # Only a POST cut off by an api restart may be stored without its 202 reaching us.
        assert set(ids) == wanted, f"{len(set(ids) - wanted)} stored but never accepted"


async def sql(stack: Stack, *statements: str) -> None:
    async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
        for statement in statements:
            await conn.execute(statement.encode())


def log_lines(path: Path, start: int) -> list[dict[str, Any]]:
    """The JSON log entries written to `path` after byte `start`."""
    with path.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


async def metric(url: str, name: str) -> float:
    """One unlabelled value of the api's /metrics."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_writer_killed_mid_stream_loses_nothing(make_stack: MakeStack) -> None:
    """kill -9 of the writer inside an INSERT, then a restart: every 202 is stored, once."""
    stack = make_stack({"FEED_WRITER_BATCH": "100"})
    author = _author()
    # Every INSERT takes 0.3 s, so the kill lands inside one; and the server notices the
    # dead client and rolls that INSERT back, as CockroachDB does when a connection
    # drops (without the check PostgreSQL would finish the statement for nobody).
    await sql(
        stack,
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$",
        "CREATE TRIGGER slow_insert AFTER INSERT ON messages "
        "FOR EACH STATEMENT EXECUTE FUNCTION slow_insert()",
        "ALTER SYSTEM SET client_connection_check_interval = '50ms'",
        "SELECT pg_reload_conf()",
    )
    writer = stack.service("writer")
    async with Poster(stack.api_url, author).running() as stream:
        await wait_for(
            lambda: stored_ids(stack, author), lambda ids: len(ids) >= 50, 30, "a first batch"
        )
        await wait_for(lambda: _active_inserts(stack), lambda n: n > 0, 10, "an INSERT in progress")
        writer.kill()
        killed_at = len(stream.accepted)
        await stream.until(killed_at + 100, 30)
        writer.start()
        await stream.until(len(stream.accepted) + 100, 30)
    assert stream.statuses.keys() == {202}, stream.statuses
    await all_stored(stack, author, stream.accepted, 60)


async def _active_inserts(stack: Stack) -> int:
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE state = 'active' AND query LIKE 'INSERT INTO messages%%'"
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_kafka_down_gives_503_then_recovers(make_stack: MakeStack) -> None:
    """Kafka stopped: 503 + Retry-After within the timeout; Kafka back: 202, same api process."""
    timeout_s = 2.0
    stack = make_stack({"FEED_KAFKA_TIMEOUT_S": str(timeout_s)})
    author = _author()
    api_pid = stack.service("api").pid
    # A refusal that comes late fails here at once, as a read timeout.
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=timeout_s + 3) as http:
        first = await http.post("/messages", json={"author": author, "text": "before"})
        assert first.status_code == 202, first.text
        stack.kafka.stop()
        for i in range(6):
            began = time.monotonic()
            r = await http.post("/messages", json={"author": author, "text": f"down {i}"})
            elapsed = time.monotonic() - began
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"] == "unavailable"
            assert elapsed <= timeout_s + 0.5, f"refusal {i} took {elapsed:.2f}s"
        stack.kafka.start()

        async def post() -> httpx.Response:
            return await http.post("/messages", json={"author": author, "text": "after"})

        back = await wait_for(post, lambda r: r.status_code == 202, 60, "202 after Kafka is back")
    assert stack.service("api").pid == api_pid
    wanted = {first.json()["id"], back.json()["id"]}
    await wait_for(
        lambda: stored_ids(stack, author), lambda ids: wanted <= set(ids), 60, "both stored"
    )


async def test_database_down_backlog_gives_429_then_drains(make_stack: MakeStack) -> None:
    """DB stopped: the backlog passes its limit and POST answers 429; DB back: 202, all stored."""
    limit = 200
    stack = make_stack({"FEED_MAX_BACKLOG": str(limit), "FEED_BACKLOG_REFRESH_S": "0.1"})
    author = _author()
    stack.postgres.stop()
    # Past the proxy: this drill judges one replica's own answers, counted by the one
    # process it asks (docs/operations.md#front-door: readiness and the proxy).
    direct = stack.replica_url()
    try:
        async with Poster(direct, author).running() as stream:
            await wait_for(
                _const(lambda s: s.get(429, 0), stream.statuses),
                lambda n: n >= 5,
                60,
                "429 while the database is down",
            )
        accepted_in_outage = len(stream.accepted)
        # The lag is read every 0.1 s: the api admits a little more than the limit, no more.
        assert limit <= accepted_in_outage <= limit + 300, accepted_in_outage
        assert await metric(stack.replica_url(), "feedsvc_writer_backlog") > limit
        async with httpx.AsyncClient(base_url=direct, timeout=30) as http:
            refused = await http.post("/messages", json={"author": author, "text": "busy"})
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert refused.json()["detail"] == "the writer is behind"
    finally:
        stack.postgres.start()
    await wait_for(
        lambda: metric(stack.replica_url(), "feedsvc_writer_backlog"),
        lambda n: n == 0,
        60,
        "the backlog drained",
    )
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:

        async def post() -> httpx.Response:
            return await http.post("/messages", json={"author": author, "text": "after"})

        back = await wait_for(post, lambda r: r.status_code == 202, 60, "202 after the DB is back")
    await all_stored(stack, author, [*stream.accepted, back.json()["id"]], 60)


async def test_inflight_limit_refuses_at_once(make_stack: MakeStack) -> None:
    """With every in-flight slot taken, the next POST gets 429 in well under 50 ms."""
    stack = make_stack({"FEED_MAX_INFLIGHT": "4", "FEED_KAFKA_TIMEOUT_S": "30"})
    author = _author()
    held: list[httpx.Response] = []
    timings: list[float] = []
    broker = stack.kafka.pid
    assert broker is not None
    async with (
        httpx.AsyncClient(base_url=stack.api_url, timeout=60) as slow,
        httpx.AsyncClient(base_url=stack.api_url, timeout=2) as fast,
        anyio.create_task_group() as tg,
    ):
        warm = await slow.post("/messages", json={"author": author, "text": "warm"})
        assert warm.status_code == 202, warm.text
        await fast.get("/health/live")  # an open connection, so only the api is timed

        async def hold(i: int) -> None:
            held.append(await slow.post("/messages", json={"author": author, "text": f"{i}"}))

        os.kill(broker, signal.SIGSTOP)
        try:
            for i in range(4):
                tg.start_soon(hold, i)
            await wait_for(
                lambda: metric(stack.replica_url(), "feedsvc_posts_inflight"),
                lambda n: n == 4,
                10,
                "4 posts in flight",
            )
            for _ in range(10):
                began = time.perf_counter()
                r = await fast.post("/messages", json={"author": author, "text": "one more"})
                timings.append(time.perf_counter() - began)
                assert r.status_code == 429, r.text
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["detail"] == "too many messages in flight"
        finally:
            os.kill(broker, signal.SIGCONT)
    timings.sort()
    assert timings[len(timings) // 2] < 0.020, timings
    assert timings[-1] < 0.050, timings
    assert [r.status_code for r in held] == [202] * 4, [r.text for r in held]
    wanted = {warm.json()["id"], *(r.json()["id"] for r in held)}
    await wait_for(lambda: stored_ids(stack, author), lambda ids: set(ids) == wanted, 30, "5 rows")


async def test_serialization_failure_is_retried(stack: Stack) -> None:
    """An INSERT failing twice with SQLSTATE 40001 is retried, and the message stored once."""
    prefix = "ser_" + uuid.uuid4().hex[:12]
    author = prefix + "_a"
    name = f"fail_{prefix}"
    log = log_of(stack, "writer")
    start = log.stat().st_size
    # nextval is not rolled back with the failed INSERT: the count survives each attempt.
    await sql(
        stack,
        f"CREATE SEQUENCE {name}_seq",
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.author LIKE '{prefix}%' AND nextval('{name}_seq') <= 2 THEN "
        "RAISE EXCEPTION 'drill: serialization failure' USING ERRCODE = '40001'; "
        "END IF; RETURN NEW; END $$",
        f"CREATE TRIGGER {name} BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION {name}()",
    )
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
            r = await http.post("/messages", json={"author": author, "text": "retry me"})
        assert r.status_code == 202, r.text
        await wait_for(lambda: stored_ids(stack, author), lambda ids: len(ids) >= 1, 30, "the row")
        await anyio.sleep(0.5)  # a duplicate, if any, would arrive right behind
        assert await stored_ids(stack, author) == [r.json()["id"]]
        async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
            cur = await conn.execute(f"SELECT last_value FROM {name}_seq")
            assert await cur.fetchone() == (3,)  # two failures, then the insert
    finally:
        await sql(
            stack,
            f"DROP TRIGGER IF EXISTS {name} ON messages",
            f"DROP FUNCTION IF EXISTS {name}()",
            f"DROP SEQUENCE IF EXISTS {name}_seq",
        )
    retries = [
        e
        for e in log_lines(log, start)
        if e["msg"] == "insert failed, retrying" and "drill: serialization failure" in e["error"]
    ]
    assert len(retries) == 2, retries
    assert "SerializationFailure" in retries[0]["error"]


async def test_sigterm_writer_and_api_exit_cleanly(make_stack: MakeStack) -> None:
    """SIGTERM: the writer exits 0 mid-stream and loses nothing; the api exits 0 in its grace."""
    grace_s = 3.0
    stack = make_stack({"FEED_SHUTDOWN_GRACE_S": str(grace_s)})
    author = _author()
    writer = stack.service("writer")
    api = stack.service("api")
    # Past the proxy: what is judged is this process's answers while it shuts down.
    async with Poster(stack.replica_url(), author).running() as stream:
        await wait_for(
            lambda: stored_ids(stack, author), lambda ids: len(ids) >= 50, 30, "a first batch"
        )
        began = time.monotonic()
        status = await anyio.to_thread.run_sync(writer.terminate, 10.0)
        assert status == 0, writer.log_tail()
        assert time.monotonic() - began < 5
        await stream.until(len(stream.accepted) + 100, 30)
        writer.start()
        await stream.until(len(stream.accepted) + 100, 30)
        # The api with POSTs in flight: they are answered, then it exits.
        began = time.monotonic()
        status = await anyio.to_thread.run_sync(api.terminate, grace_s + 10)
        assert status == 0, api.log_tail()
        assert time.monotonic() - began < grace_s + 2
    assert stream.statuses.keys() == {202}, stream.statuses
    await all_stored(stack, author, stream.accepted, 60, exact=False)
