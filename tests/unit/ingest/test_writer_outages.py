"""The writer through outages and shutdown: nothing skipped, nothing committed too early."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import psycopg
import pytest
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
)

from feedsvc.ingest import retry
from feedsvc.messages import Message, encode
from tests.unit.ingest.fakes import FakeStore, Parts, message, record


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "FIRST_DELAY_S", 0.001)


async def test_stopping_while_the_database_is_down_returns_with_the_batch_uncommitted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGTERM during a database outage: `run` returns, nothing inserted, lettered or committed."""
    parts = Parts([[record(0, b"garbage"), record(1, encode(message("ok")))]])
    stopping = parts.stopping

    class DownStore(FakeStore):
        async def insert(self, messages: Sequence[Message]) -> int:
            self.calls.append(len(messages))
            if len(self.calls) == 3:  # SIGTERM arrives during the outage
                stopping.set()
            raise psycopg.OperationalError("down")

    parts.writer.store = parts.store = DownStore(parts.events)
    with anyio.fail_after(20):
        await parts.writer.run(parts.stopping)
    assert parts.source.committed == {}
    assert parts.producer.sent == [] and parts.store.rows == {}
    assert "stopping with a batch unfinished; it will be read again" in caplog.messages


async def test_a_letter_send_that_fails_holds_back_the_next_letters_and_the_commit() -> None:
    """Letters go out one by one in offset order; a failing one is retried in its place."""
    records = [record(o, b"garbage") for o in range(3)] + [record(3, encode(message("ok")))]
    parts = Parts([records])
    parts.producer.failures = [KafkaConnectionError("down"), KafkaTimeoutError()]
    await parts.writer.run(parts.stopping)
    assert parts.events == ["insert 1", "dlq 0", "dlq 1", "dlq 2", "commit 0:4"]


async def test_a_letter_kafka_calls_final_is_retried_never_skipped() -> None:
    """A DLQ send refused as too large (not retriable for Kafka) is retried, not dropped."""
    parts = Parts([[record(0, b"garbage")]])
    parts.producer.failures = [MessageSizeTooLargeError()] * 3
    await parts.writer.run(parts.stopping)
    assert [d.offset for d in parts.producer.sent] == [0]
    assert parts.events[-2:] == ["dlq 0", "commit 0:1"]


async def test_a_commit_that_hangs_is_bounded_and_retried() -> None:
    """A commit with the coordinator away never returns in aiokafka: timed out, tried again."""
    parts = Parts([[record(0, encode(message("ok")))]])
    parts.source.commit_failures = [None]
    with anyio.fail_after(10):
        await parts.writer.run(parts.stopping)
    assert parts.events == ["insert 1", "commit 0:1"]


async def test_a_commit_refused_after_a_rebalance_moves_on_with_the_rows_stored() -> None:
    """The partitions went to another writer: the commit error is logged, the next batch read."""
    first, second = message("one"), message("two")
    parts = Parts([[record(0, encode(first))], [record(1, encode(second))]])
    parts.source.commit_failures = [CommitFailedError("rebalanced")]
    await parts.writer.run(parts.stopping)
    assert set(parts.store.rows) == {first.id, second.id}
    assert parts.events == ["insert 1", "insert 1", "commit 0:2"]
