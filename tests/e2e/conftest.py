"""End-to-end fixtures: real PostgreSQL, a real Kafka broker and feedsvc processes.

One stack serves the whole session (tests keep apart by unique authors); the
outage drills build their own with `make_stack`, so stopping a broker or the
database never disturbs another test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import httpx
import pytest
from local_stack import Stack, scratch_dir

# Quicker reactions than production: tests wait on these, users do not.
FAST = {
    "FEED_BACKLOG_REFRESH_S": "0.2",
    "FEED_HEARTBEAT_S": "1",
    "FEED_KAFKA_TIMEOUT_S": "3",
    "FEED_SHUTDOWN_GRACE_S": "3",
    "FEED_LOG_LEVEL": "INFO",
    # The changefeed is at-least-once: the stand-in repeats a row now and then, so every
    # feed test also checks that repeats never reach a client.
    "STANDIN_DUPLICATE_EVERY": "5",
}


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="session")
def make_stack() -> Iterator[Callable[..., Stack]]:
    """Builds stacks under scratch directories; every one is torn down at the end."""
    made: list[Stack] = []

    def make(extra_env: Mapping[str, str] | None = None) -> Stack:
        stack = Stack(scratch_dir(), {**FAST, **(extra_env or {})}, log=_quiet)
        made.append(stack)
        stack.up()
        return stack

    yield make
    for stack in made:
        stack.down()


@pytest.fixture(scope="session")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    """The session's shared stack: api, writer and changefeed stand-in, ready."""
    return make_stack()


@pytest.fixture
def author() -> str:
    """An author name no other test uses."""
    return "t_" + uuid.uuid4().hex[:20]


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        yield http
