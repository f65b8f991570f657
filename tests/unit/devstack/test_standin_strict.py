"""The stand-in's strict settings: CockroachDB's HLC shape and a restart's order."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.envelope import hlc, resolved_hlc, resolved_value, row_value
from devstack.standin import Options, interleave_by_key
from feedsvc.relay.changefeed import Resolved, Row, decode_record, hlc_value

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STAMPS = st.integers(min_value=1_600_000_000_000_000, max_value=2_000_000_000_000_000)


def _at(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _history(micros: int) -> int:
    """The history read's snapshot time for a commit clock at `micros` (feedsvc/store.py)."""
    return hlc_value(f"{micros * 1000}.0000000000")


def test_strict_hlc_has_a_nanosecond_wall_and_a_logical_counter() -> None:
    """A strict `updated` is not a whole microsecond and its logical counter is above 0."""
    wall, logical = hlc(_at(1_733_390_000_123_456), strict=True).split(".")
    assert int(wall) % 1000 != 0 and int(logical) > 0 and len(logical) == 10


def test_kind_hlc_keeps_microsecond_walls() -> None:
    """The kind default is unchanged: a whole microsecond, logical 0."""
    assert hlc(_at(1_733_390_000_123_456)) == "1733390000123456000.0000000000"


@given(_STAMPS, _STAMPS)
def test_strict_hlcs_keep_every_order_the_relay_relies_on(row: int, clock: int) -> None:
    """A row stamped at or before the clock is at or below its resolved and history times,
    and one stamped after is above both."""
    updated = hlc_value(hlc(_at(row), strict=True))
    resolved = hlc_value(resolved_hlc(_at(clock), strict=True))
    if row <= clock:
        assert updated <= resolved and updated <= _history(clock)
    else:
        assert updated > resolved and updated > _history(clock)


def test_strict_records_decode() -> None:
    """The relay decodes strict rows and resolved records with their exact HLCs."""
    at = _at(1_733_390_000_123_456)
    mid = uuid.uuid4()
    row = decode_record(
        json.dumps([str(mid)]).encode(), row_value(mid, "a", "t", at, at, strict=True)
    )
    assert isinstance(row, Row) and row.updated == hlc(at, strict=True)
    assert decode_record(None, resolved_value(at, strict=True)) == Resolved(
        resolved_hlc(at, strict=True)
    )


def test_restart_order_keeps_each_keys_order_and_interleaves_keys() -> None:
    """Each key's repeats come before its newer records; the keys are not in send order."""
    repeats = [(f"k{n}".encode(), f"v{n}".encode()) for n in range(50)]
    fresh = [(b"k3", b"newer"), (b"k49", b"newer")]
    out = interleave_by_key(repeats, fresh, random.Random(7))
    assert sorted(out) == sorted(repeats + fresh)
    assert out.index((b"k3", b"v3")) < out.index((b"k3", b"newer"))
    assert out.index((b"k49", b"v49")) < out.index((b"k49", b"newer"))
    assert out != repeats + fresh


def test_an_unknown_strictness_is_refused() -> None:
    """A misspelt STANDIN_HLC or STANDIN_RESTART_ORDER stops the stand-in, naming it."""
    with pytest.raises(SystemExit, match="STANDIN_HLC"):
        Options("postgresql://", "kafka:9092", hlc="nanos")
    with pytest.raises(SystemExit, match="STANDIN_RESTART_ORDER"):
        Options("postgresql://", "kafka:9092", restart_order="random")
