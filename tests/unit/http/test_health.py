"""`/health/ready` means "can serve": Kafka and the feed decide; the database only degrades."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import pytest

from feedsvc.http.health import DatabaseWatch, readiness


@dataclass
class Database:
    """A database that answers pings, or not (`down`); counts them."""

    down: bool = False
    pings: int = 0

    async def ping(self) -> None:
        self.pings += 1
        if self.down:
            raise OSError("connection refused")


@pytest.mark.parametrize(
    ("database", "kafka", "feed", "status", "verdict"),
    [
        (True, True, True, 200, "ready"),
        (False, True, True, 200, "degraded"),
        (True, False, True, 503, "not ready"),
        (False, True, False, 503, "not ready"),
    ],
)
def test_ready_follows_kafka_and_the_feed_and_the_database_only_degrades(
    database: bool, kafka: bool, feed: bool, status: int, verdict: str
) -> None:
    """Kafka away or the feed behind is 503; the database away is 200 `degraded`, named."""
    answer, body = readiness(database=database, kafka=kafka, feed=feed)
    assert (answer, body["status"]) == (status, verdict)
    assert body["database"] == ("ok" if database else "unreachable")


async def test_the_watch_follows_the_database_down_and_back() -> None:
    """A ping that fails marks the database unreachable; the next answered one, reachable."""
    database = Database(down=True)
    watch = DatabaseWatch(database)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run, 0.01)
        await anyio.wait_all_tasks_blocked()
        assert not watch.reachable
        database.down = False
        pings = database.pings
        while database.pings < pings + 2:  # one answered ping at least, on the watch's clock
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(0.01)
        assert watch.reachable
        tg.cancel_scope.cancel()
