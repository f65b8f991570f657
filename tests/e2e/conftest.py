"""End-to-end fixtures: the feedsvc processes against a real database and a real Kafka.

Natively (the default) the tests start everything: PostgreSQL, a Kafka broker, the
changefeed stand-in, the feedsvc processes and the proxy in front of the api, so that
`stack.api_url` is the front door users hit (one api replica unless a test asks for
more; `stack.replica_url()` reaches a replica directly). One stack serves the whole session
(tests keep apart by unique authors); the outage drills build their own with
`make_stack`, so stopping a broker or the database never disturbs another test.

With FEEDSVC_TEST_BACKEND=cockroach (the test container of `scripts/test-in-docker`)
the database, Kafka and the changefeed are compose services that setup has prepared;
the session's stack is then only the api and writer processes, started here against
the FEEDSVC_TEST_* addresses. Tests that need to stop or rebuild a server are
`native_only` (tests/support.py) and skipped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import httpx
import pytest

from devstack import ExternalStack, Stack, StackError, scratch_dir
from devstack.proxy import ONE_ADDRESS
from tests.support import COCKROACH

# Quicker reactions than production: tests wait on these, users do not.
FAST = {
    "FEED_BACKLOG_REFRESH_S": "0.2",
    "FEED_HEARTBEAT_S": "1",
    "FEED_KAFKA_TIMEOUT_S": "3",
    "FEED_DB_TIMEOUT_S": "3",
    "FEED_SHUTDOWN_GRACE_S": "3",
    "FEED_LOG_LEVEL": "INFO",
    # One api process: tests read its /metrics and signal its pid; two workers would each
    # answer for themselves. tests/e2e/test_workers.py runs two.
    "FEED_API_WORKERS": "1",
    # The changefeed is at-least-once: the stand-in repeats a row now and then, so every
    # feed test also checks that repeats never reach a client.
    "STANDIN_DUPLICATE_EVERY": "5",
    # The stand-in as strict as CockroachDB (devstack/standin.py): nanosecond walls and
    # logical counters in `updated`, resolved records 3 s behind (the default
    # kv.closed_timestamp.target_duration), a restart's repeats in CockroachDB's order.
    "STANDIN_HLC": "cockroach",
    "STANDIN_RESOLVED_LAG_S": "3",
    "STANDIN_RESTART_ORDER": "cockroach",
    # Every test's client is 127.0.0.1, standing for many clients (the drills hold 1,000
    # streams): the proxy's per-address limits are out of the way but in
    # tests/e2e/test_fair_share.py, which sets small ones.
    **ONE_ADDRESS,
}

# Where the cockroach backend's services are, as compose.yaml's `tests` service says.
EXTERNAL_DATABASE = "FEEDSVC_TEST_DATABASE_URL"
EXTERNAL_KAFKA = "FEEDSVC_TEST_KAFKA_BOOTSTRAP"


def _quiet(_: str) -> None:
    pass


def external_stack(environ: Mapping[str, str]) -> ExternalStack:
    """The cockroach backend's stack (not started): api and writer against FEEDSVC_TEST_*."""
    missing = [name for name in (EXTERNAL_DATABASE, EXTERNAL_KAFKA) if not environ.get(name)]
    if missing:
        raise StackError(
            f"FEEDSVC_TEST_BACKEND=cockroach needs {' and '.join(missing)} "
            "(compose.yaml's `tests` service sets them)"
        )
    return ExternalStack(
        scratch_dir(),
        environ[EXTERNAL_DATABASE],
        environ[EXTERNAL_KAFKA],
        FAST,
        log=_quiet,
    )


def native_stack(extra_env: Mapping[str, str] | None = None, replicas: int = 1) -> Stack:
    """A native stack with the tests' quick settings and `extra_env`, up; down if it fails."""
    stack = Stack(scratch_dir(), {**FAST, **(extra_env or {})}, replicas=replicas, log=_quiet)
    try:
        stack.up()
    except BaseException:
        stack.down()
        raise
    return stack


@pytest.fixture
def make_stack() -> Iterator[Callable[..., Stack]]:
    """Builds native stacks of the test's own; they are torn down when the test ends.

    Note: per test, not per session: a drill's stack (a Kafka JVM, a PostgreSQL, api and
    writer) left running until the session ends made every later test share the cores
    with all of them.
    """
    if COCKROACH:
        # A test that builds its own servers cannot run against the compose services.
        pytest.fail(
            "make_stack builds native stacks only: mark the test native_only", pytrace=False
        )
    made: list[Stack] = []

    def make(extra_env: Mapping[str, str] | None = None, replicas: int = 1) -> Stack:
        made.append(native_stack(extra_env, replicas))
        return made[-1]

    yield make
    for stack in made:
        stack.down()
        shutil.rmtree(stack.root, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The session's shared stack, ready: api, writer and the changefeed (or its stand-in)."""
    shared = native_stack() if not COCKROACH else external_stack(os.environ)
    try:
        if COCKROACH:
            shared.up()
        yield shared
    finally:
        shared.down()


@pytest.fixture
def author() -> str:
    """An author name no other test uses."""
    return "t_" + uuid.uuid4().hex[:20]


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        yield http
