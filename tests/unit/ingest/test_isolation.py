"""A refused row is isolated by splitting its batch; transient errors are retried, never split."""

from __future__ import annotations

import math

import anyio
import psycopg
import pytest

from feedsvc.ingest import retry
from feedsvc.ingest.isolation import insert_isolating
from feedsvc.ingest.retry import BatchAbandoned
from tests.unit.ingest.fakes import FakeStore, message


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "FIRST_DELAY_S", 0.001)


@pytest.mark.parametrize("bad_at", [[0], [37], [99], [0, 37, 99], list(range(0, 100, 9))])
async def test_every_good_row_is_stored_and_only_refused_rows_come_back(bad_at: list[int]) -> None:
    """Wherever the refused rows sit in a batch, all others are stored and they alone return."""
    batch = [message(f"m {i}\x00" if i in bad_at else f"m {i}") for i in range(100)]
    store = FakeStore([])
    refused = await insert_isolating(store, batch, anyio.Event())
    assert [m for m, _ in refused] == [batch[i] for i in bad_at]
    assert all(isinstance(exc, psycopg.DataError) for _, exc in refused)
    assert set(store.rows) == {m.id for i, m in enumerate(batch) if i not in bad_at}
    # Bisection, not one row at a time: about 2·log2(n) statements per refused row.
    assert len(store.calls) <= 1 + 2 * len(bad_at) * math.ceil(math.log2(100))


async def test_a_batch_without_refusals_is_one_statement() -> None:
    """The common case costs one INSERT."""
    store = FakeStore([])
    assert (
        await insert_isolating(store, [message(f"m {i}") for i in range(50)], anyio.Event()) == []
    )
    assert store.calls == [50]


async def test_transient_errors_are_retried_whole() -> None:
    """40001 and a lost connection retry the same batch: no split, no row refused."""
    failures = [psycopg.errors.SerializationFailure("retry"), psycopg.OperationalError("lost")]
    store = FakeStore([], failures)
    batch = [message(f"m {i}") for i in range(10)]
    assert await insert_isolating(store, batch, anyio.Event()) == []
    assert store.calls == [10, 10, 10]
    assert len(store.rows) == 10


async def test_each_retry_is_logged_with_the_rows_it_holds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An insert that fails transiently logs a warning naming how many rows wait on it."""
    store = FakeStore([], [psycopg.OperationalError("lost")] * 2)
    await insert_isolating(store, [message(f"m {i}") for i in range(6)], anyio.Event())
    retries = [r for r in caplog.records if r.getMessage() == "insert failed, retrying"]
    assert [getattr(r, "rows", None) for r in retries] == [6, 6]


async def test_an_error_that_blames_no_row_is_retried_not_split() -> None:
    """A missing table refuses every row alike: waited out, never a reason to drop rows."""
    store = FakeStore([], [psycopg.errors.UndefinedTable("no table")] * 3)
    batch = [message(f"m {i}") for i in range(8)]
    assert await insert_isolating(store, batch, anyio.Event()) == []
    assert store.calls == [8, 8, 8, 8]


async def test_stopping_during_an_outage_abandons_the_batch() -> None:
    """Told to stop while the database is down: BatchAbandoned, nothing refused."""
    store = FakeStore([], [psycopg.OperationalError("down")] * 1000)
    stopping = anyio.Event()
    stopping.set()
    with anyio.fail_after(10), pytest.raises(BatchAbandoned):
        await insert_isolating(store, [message("m")], stopping)
    assert store.rows == {}
