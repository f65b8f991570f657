"""The writer: decode, insert isolating refusals, dead letters, and the offset committed last."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import msgspec
import psycopg
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, NoOffsetForPartitionError, OffsetOutOfRangeError

from feedsvc.ingest import retry
from feedsvc.ingest.deadletters import DEAD_LETTERS_TOTAL
from feedsvc.ingest.writer import EXPIRED_TOTAL, OUT_OF_RANGE_TOTAL, STORED_TOTAL
from feedsvc.messages import Submission, encode, new_message
from tests.unit.ingest.fakes import TOPIC, Parts, message, record


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "FIRST_DELAY_S", 0.001)


async def test_a_refused_row_is_dead_lettered_and_its_neighbours_stored() -> None:
    """NUL in text among good rows: the good ones stored, the bad one in the DLQ, all committed."""
    good = [message(f"m {i}") for i in range(9)]
    bad = message("nul \x00 here")
    records = [record(i, encode(m)) for i, m in enumerate([*good[:4], bad, *good[4:]])]
    parts = Parts([records])
    await parts.writer.run(parts.stopping)
    assert set(parts.store.rows) == {m.id for m in good}
    assert [(d.offset, d.stage) for d in parts.producer.sent] == [(4, "insert")]
    assert "NUL" in parts.producer.sent[0].reason
    assert parts.source.committed == {TopicPartition(TOPIC, 0): 10}
    assert (
        parts.metrics.registry.get_sample_value(DEAD_LETTERS_TOTAL, {"stage": "insert"}) or 0
    ) == 1
    assert (parts.metrics.registry.get_sample_value(STORED_TOTAL) or 0) == 9


async def test_the_offset_is_committed_after_the_rows_and_the_dead_letters() -> None:
    """Insert, then every dead letter, then one commit per batch of next offsets per partition."""
    records = [
        record(0, b"garbage", partition=1),
        record(7, encode(message("ok")), partition=2),
        record(1, encode(message("bad \x00")), partition=1),
    ]
    parts = Parts([records])
    await parts.writer.run(parts.stopping)
    commits = [e for e in parts.events if e.startswith("commit")]
    assert commits == ["commit 1:2,2:8"]
    assert parts.events[-1] == commits[0]
    assert parts.events.index("dlq 0") < parts.events.index("dlq 1") < len(parts.events) - 1
    inserts = [i for i, e in enumerate(parts.events) if e.startswith("insert")]
    assert max(inserts) < parts.events.index("dlq 0")


async def test_repeats_of_a_refused_id_are_dead_lettered_too() -> None:
    """Records sharing a refused id are neither stored nor silently dropped."""
    sub = Submission(author="ada", text="nul \x00")
    first, again = new_message(sub, "key"), new_message(sub, "key")
    parts = Parts([[record(0, encode(first)), record(1, encode(again))]])
    await parts.writer.run(parts.stopping)
    assert [d.offset for d in parts.producer.sent] == [0, 1]
    assert parts.store.rows == {}


async def test_kafka_down_for_the_dead_letters_holds_the_commit_back() -> None:
    """The DLQ unreachable: retried until it takes the letter; only then the commit."""
    parts = Parts([[record(0, b"garbage"), record(1, encode(message("ok")))]])
    parts.producer.failures = [KafkaConnectionError("down")] * 4
    await parts.writer.run(parts.stopping)
    assert [d.offset for d in parts.producer.sent] == [0]
    assert parts.events[-2:] == ["dlq 0", "commit 0:2"]


async def test_stopping_while_the_dlq_is_down_leaves_the_batch_uncommitted() -> None:
    """SIGTERM during a Kafka outage: the writer returns, nothing skipped, nothing committed."""
    parts = Parts([[record(0, b"garbage"), record(1, encode(message("ok")))]])
    parts.producer.down = KafkaConnectionError("down")
    parts.stopping.set()

    async def run() -> None:
        # `run` checks `stopping` first; hand it the batch directly as the loop would.
        await parts.writer.handle(parts.source.batches[0], parts.stopping)

    with anyio.fail_after(10), pytest.raises(retry.BatchAbandoned):
        await run()
    assert parts.source.committed == {}
    assert parts.producer.sent == []


async def test_a_new_group_starts_at_the_earliest_quietly() -> None:
    """No committed offset: seek to the beginning, count nothing."""
    parts = Parts()
    tp = TopicPartition(TOPIC, 3)
    parts.source.raises = [NoOffsetForPartitionError(tp)]
    await parts.writer.run(parts.stopping)
    assert parts.source.seeks == [tp]
    assert (parts.metrics.registry.get_sample_value(OUT_OF_RANGE_TOTAL) or 0) == 0


async def test_an_expired_position_is_counted_and_logged_as_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Committed offset 3 when retention kept only from 10: 7 records lost, said loudly."""
    parts = Parts()
    tp = TopicPartition(TOPIC, 2)
    parts.source.raises = [OffsetOutOfRangeError({tp: 3})]
    parts.source.earliest = 10
    await parts.writer.run(parts.stopping)
    assert parts.source.seeks == [tp]
    assert (parts.metrics.registry.get_sample_value(OUT_OF_RANGE_TOTAL) or 0) == 1
    assert (parts.metrics.registry.get_sample_value(EXPIRED_TOTAL) or 0) == 7
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and getattr(errors[0], "lost", None) == 7


async def test_a_transient_database_error_is_retried_not_dead_lettered() -> None:
    """40001 on the batch: the same rows again, stored, no dead letter."""
    parts = Parts([[record(i, encode(message(f"m {i}"))) for i in range(5)]])
    parts.store.failures = [psycopg.errors.SerializationFailure("retry")]
    await parts.writer.run(parts.stopping)
    assert len(parts.store.rows) == 5 and parts.producer.sent == []


async def test_batches_inserts_and_retries_are_measured() -> None:
    """Batches of 4 and 2, a 40001 and a DLQ outage: sizes, insert times, each retry recorded."""
    parts = Parts(
        [
            [*(record(i, encode(message(f"m {i}"))) for i in range(3)), record(3, b"garbage")],
            [record(i, encode(message(f"m {i}"))) for i in range(4, 6)],
        ]
    )
    parts.store.failures = [psycopg.errors.SerializationFailure("retry")]
    parts.producer.failures = [KafkaConnectionError("down")]
    await parts.writer.run(parts.stopping)
    value = parts.metrics.registry.get_sample_value
    assert value("feedsvc_writer_batch_size_count") == 2
    assert value("feedsvc_writer_batch_size_sum") == 6
    assert value("feedsvc_writer_batch_size_bucket", {"le": "1.0"}) == 0
    assert value("feedsvc_writer_insert_seconds_count") == 2
    assert (value("feedsvc_writer_insert_seconds_sum") or 0) > 0
    assert value("feedsvc_writer_retries_total", {"operation": "insert"}) == 1
    assert value("feedsvc_writer_retries_total", {"operation": "dead letter send"}) == 1
    assert value("feedsvc_writer_stored_total") == 5


async def test_ready_while_consuming_except_while_an_insert_is_retried() -> None:
    """Ready at the first insert, not at its retry, ready again once stored, not after run."""
    parts = Parts([[record(0, encode(message("one")))], [record(1, encode(message("two")))]])
    parts.store.failures = [psycopg.errors.SerializationFailure("retry")]
    seen: list[bool] = []
    insert = parts.store.insert

    async def watched(messages: Any) -> int:
        seen.append(parts.writer.ready)
        return await insert(messages)

    parts.store.insert = watched  # type: ignore[method-assign]
    assert not parts.writer.ready
    await parts.writer.run(parts.stopping)
    assert seen == [True, False, True]
    assert not parts.writer.ready


async def test_accepted_to_stored_is_timed_for_each_stored_message() -> None:
    """Three messages accepted 2 s ago, one refused: two times of about 2 s."""
    old = datetime.now(UTC) - timedelta(seconds=2)
    texts = ("a", "b\x00", "c")
    batch = [
        record(i, encode(msgspec.structs.replace(message(text), created_at=old)))
        for i, text in enumerate(texts)
    ]
    parts = Parts([batch])
    await parts.writer.run(parts.stopping)
    value = parts.metrics.registry.get_sample_value
    assert value("feedsvc_writer_accepted_to_stored_seconds_count") == 2
    assert 4 <= (value("feedsvc_writer_accepted_to_stored_seconds_sum") or 0) < 10


async def test_each_stored_message_is_logged_with_its_request_id_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At DEBUG a stored message's line names its id and its post's `request-id` header."""
    caplog.set_level(logging.DEBUG, logger="feedsvc.ingest.writer")
    sent = message("traced")
    traced = record(0, encode(sent))._replace(headers=(("request-id", b"req-7"),))
    parts = Parts([[traced, record(1, encode(message("plain")))]])
    await parts.writer.run(parts.stopping)
    stored = [(getattr(r, "id", None), getattr(r, "request_id", "-")) for r in caplog.records]
    assert (str(sent.id), "req-7") in stored
    assert sum(1 for r in caplog.records if r.getMessage() == "stored") == 2
