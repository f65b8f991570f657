"""The result shapes: the keys issue 12 names, frozen, printed as one JSON last line."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from bench.report import emit
from bench.result import ChurnRun, FanoutRun, FaultRun, Idle, Ingest, Overload, Resume

KEYS: dict[type[msgspec.Struct], set[str]] = {
    Ingest: {
        "accepted_per_s", "stored_per_s", "post_p50_ms", "post_p99_ms", "lost", "duplicates",
        "baseline_post_per_s", "ratio_to_baseline", "api_cpu_us_per_post",
        "baseline_cpu_us_per_request",
    },
    Overload: {
        "offered_per_s", "accepted_per_s", "rejected_429", "rejected_503", "reject_p99_ms",
        "max_backlog", "backlog_limit", "lost",
    },
    FanoutRun: {
        "subscribers", "deliveries_per_s", "deliver_p50_ms", "deliver_p99_ms", "post_p99_ms",
        "baseline_deliveries_per_s", "ratio_to_baseline",
    },
    Idle: {"connections", "rss_per_conn_kb", "heartbeat_cpu_pct", "post_p99_ms"},
    ChurnRun: {"streams", "held", "api_cpu_us_per_leave_join", "idle_cpu_pct", "ratio_to_first"},
    Resume: {"clients", "catch_up_s", "gaps", "duplicates", "kafka_consumers_max"},
    FaultRun: {
        "fault", "accepted", "stored", "delivered_to_every_client", "lost",
        "duplicates_delivered", "recovery_s",
    },
}  # fmt: skip


@pytest.mark.parametrize("shape", list(KEYS), ids=lambda s: s.__name__)
def test_each_shape_has_the_keys_the_issue_names(shape: type[msgspec.Struct]) -> None:
    """Every key the issues name for the scenario (12; 17 for churn) is a field of its Struct."""
    assert KEYS[shape] <= set(shape.__struct_fields__)


def _idle(**changes: Any) -> Idle:
    fields: dict[str, Any] = {
        "connections": 4000,
        "rss_per_conn_kb": 21.5,
        "heartbeat_cpu_pct": 1.2,
        "post_p99_ms": 30.0,
        "asked": 4000,
        "conditions": {"cpu_count": 2},
    }
    return Idle(**{**fields, **changes})


def test_a_result_is_frozen() -> None:
    """A result cannot be changed once made."""
    result = _idle()
    with pytest.raises(AttributeError):
        result.connections = 1  # type: ignore[misc]


def test_emit_prints_one_json_object_as_the_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The last stdout line decodes to an object with the scenario's name and keys."""
    print("something before")
    emit(_idle(rss_per_conn_kb=None))
    last = capsys.readouterr().out.splitlines()[-1]
    decoded = msgspec.json.decode(last)
    assert decoded["scenario"] == "idle"
    assert decoded["rss_per_conn_kb"] is None
    assert KEYS[Idle] <= set(decoded)
