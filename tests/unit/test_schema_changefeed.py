"""feedsvc/schema.py's changefeed decisions: which jobs count as live, and what setup does."""

from __future__ import annotations

import psycopg
import pytest

from feedsvc.messages import FEED_RESTART_KEY, FeedRestart, encode_feed_restart
from feedsvc.relay.changefeed import ChangefeedDecodeError, Gap, decode_record
from feedsvc.schema import (
    DEFAULT_GC_TTL_S,
    ChangefeedJob,
    ensure_changefeed,
    find_changefeed,
    job_state,
    parse_gc_ttl,
    plan_changefeed,
)

NOW_S = 1_800_000_000
NOW = f"{NOW_S * 10**9}.0000000000"
TTL = 14_400


def hlc(seconds_ago: float) -> str:
    """An HLC timestamp `seconds_ago` before NOW."""
    return f"{int((NOW_S - seconds_ago) * 10**9)}.0000000003"


def job(status: str, high_water: str | None = None) -> ChangefeedJob:
    return ChangefeedJob(job_id=42, status=status, high_water_timestamp=high_water)


# Every status SHOW JOBS documents (https://www.cockroachlabs.com/docs/v25.4/show-jobs#job-status).
LIVE = [
    "pending",
    "pause-requested",
    "cancel-requested",
    "running",
    "retry-running",
    "retry-reverting",
    "reverting",
]
FINISHED = ["failed", "succeeded", "canceled", "revert-failed"]


@pytest.mark.parametrize("status", LIVE)
def test_unfinished_statuses_are_live(status: str) -> None:
    """A job that may still emit is left alone, so no second changefeed doubles the topic."""
    assert job_state(status) == "live"
    plan = plan_changefeed(job(status), table_has_rows=True, now_hlc=NOW, gc_ttl_s=TTL)
    assert plan.action == "keep"


def test_an_unknown_status_is_live() -> None:
    """A status a later release adds is treated as live, not replaced."""
    assert job_state("resume-requested") == "live"


@pytest.mark.parametrize("status", FINISHED)
def test_finished_statuses_are_replaced(status: str) -> None:
    """Only the four terminal statuses lead to a new changefeed."""
    assert job_state(status) == "finished"
    plan = plan_changefeed(job(status, hlc(60)), table_has_rows=True, now_hlc=NOW, gc_ttl_s=TTL)
    assert plan.action == "create"


def test_paused_job_is_resumed() -> None:
    """A paused job (on_error='pause' after a sink error) is resumed from its checkpoint."""
    plan = plan_changefeed(job("paused", hlc(3600)), table_has_rows=True, now_hlc=NOW, gc_ttl_s=TTL)
    assert (plan.action, plan.gap) == ("resume", False)


def test_failed_job_inside_the_gc_window_restarts_from_its_cursor() -> None:
    """A failed job's high-water mark, still inside the GC window, is the new job's cursor."""
    plan = plan_changefeed(job("failed", hlc(3600)), table_has_rows=True, now_hlc=NOW, gc_ttl_s=TTL)
    assert plan.action == "create"
    assert plan.cursor == hlc(3600)
    assert not plan.gap


@pytest.mark.parametrize("age", [TTL + 1, TTL - 60, 7 * 86400])
def test_failed_job_past_the_gc_window_starts_fresh_with_a_gap(age: int) -> None:
    """A cursor at or near the GC threshold would fail: start fresh, and flag the gap."""
    plan = plan_changefeed(job("failed", hlc(age)), table_has_rows=True, now_hlc=NOW, gc_ttl_s=TTL)
    assert plan.action == "create"
    assert plan.cursor is None
    assert plan.gap
    assert "GC window" in plan.reason


def test_failed_job_without_high_water_starts_fresh_with_a_gap() -> None:
    """A job that failed before its first checkpoint has no cursor to restart from."""
    plan = plan_changefeed(job("failed"), table_has_rows=True, now_hlc=NOW, gc_ttl_s=TTL)
    assert (plan.action, plan.cursor, plan.gap) == ("create", None, True)


def test_no_visible_job_on_a_table_with_rows_is_a_gap() -> None:
    """A finished job older than 12 hours is not listed: the rows before now may be missing."""
    plan = plan_changefeed(None, table_has_rows=True, now_hlc=NOW, gc_ttl_s=TTL)
    assert (plan.action, plan.cursor, plan.gap) == ("create", None, True)


def test_first_run_on_an_empty_table_has_no_gap() -> None:
    """The very first changefeed misses nothing: no reset for anyone."""
    plan = plan_changefeed(None, table_has_rows=False, now_hlc=NOW, gc_ttl_s=TTL)
    assert (plan.action, plan.cursor, plan.gap) == ("create", None, False)


def test_gc_ttl_is_read_from_the_zone_configuration() -> None:
    """`gc.ttlseconds` comes from SHOW ZONE CONFIGURATION's raw_config_sql."""
    raw = (
        "ALTER RANGE default CONFIGURE ZONE USING\n    range_min_bytes = 134217728,\n"
        "    gc.ttlseconds = 600,\n    num_replicas = 3"
    )
    assert parse_gc_ttl(raw) == 600
    assert parse_gc_ttl("something else") == DEFAULT_GC_TTL_S


# SHOW ZONE CONFIGURATION's documented row (target, raw_config_sql), verbatim:
# https://www.cockroachlabs.com/docs/v25.4/show-zone-configurations
DOCUMENTED_ZONE = (
    "DATABASE movr",
    "ALTER DATABASE movr CONFIGURE ZONE USING\n"
    "    range_min_bytes = 134217728,\n"
    "    range_max_bytes = 536870912,\n"
    "    gc.ttlseconds = 90000,\n"
    "    num_replicas = 5,\n"
    "    num_voters = 3,\n"
    "    constraints = '{+region=europe-west1: 1, +region=us-east1: 1, +region=us-west1: 1}',\n"
    "    voter_constraints = '[+region=us-east1]',\n"
    "    lease_preferences = '[[+region=us-east1]]'",
)
# SHOW CHANGEFEED JOB's documented row: job_id, status and high_water_timestamp, the
# columns setup reads. https://www.cockroachlabs.com/docs/v25.4/show-jobs#show-changefeed-jobs
DOCUMENTED_JOB = (1053639803034894337, "running", "1741616141951323000.0000000000")


def test_the_documented_zone_configuration_row_gives_its_gc_ttl() -> None:
    """The documented multi-line raw_config_sql yields its gc.ttlseconds, 90000."""
    assert parse_gc_ttl(DOCUMENTED_ZONE[1]) == 90_000


def test_the_documented_changefeed_job_row_is_read_as_a_live_job() -> None:
    """The documented SHOW CHANGEFEED JOB row becomes a running job that setup keeps."""
    conn = FakeConn(None, rows=True)
    conn.documented_job = DOCUMENTED_JOB
    found = find_changefeed(conn, "kafka://kafka:9092?topic_name=messages.committed")  # type: ignore[arg-type]
    assert found == ChangefeedJob(*DOCUMENTED_JOB)
    plan = plan_changefeed(found, table_has_rows=True, now_hlc=NOW, gc_ttl_s=TTL)
    assert plan.action == "keep"


def test_the_documented_high_water_mark_is_a_cursor_of_its_age() -> None:
    """A failed job with the documented high-water mark, 60 s old, restarts from it verbatim."""
    high_water = DOCUMENTED_JOB[2]
    now = f"{1741616141951323000 + 60 * 10**9}.0000000000"
    plan = plan_changefeed(
        job("failed", high_water), table_has_rows=True, now_hlc=now, gc_ttl_s=TTL
    )
    assert (plan.action, plan.cursor, plan.gap) == ("create", high_water, False)


def test_restart_marker_reads_as_a_gap() -> None:
    """The marker is no changefeed record: the relay decodes it as a gap with its reason."""
    marker = FeedRestart(reason="test", previous_job=1, previous_high_water=None, at=NOW)
    assert decode_record(FEED_RESTART_KEY, encode_feed_restart(marker)) == Gap(
        "the changefeed restarted with a gap: test"
    )


def test_a_marker_that_is_not_one_is_undecodable() -> None:
    """A record with the marker's key but another value is skipped like any bad record."""
    with pytest.raises(ChangefeedDecodeError):
        decode_record(FEED_RESTART_KEY, b'{"feed_restart": 1}')


class FakeConn:
    """Answers the statements ensure_changefeed sends, as CockroachDB would; logs them."""

    def __init__(self, job: ChangefeedJob | None, *, rows: bool, refuse_cursor: bool = False):
        self.job = job
        self.rows = rows
        self.refuse_cursor = refuse_cursor
        # A documented SHOW CHANGEFEED JOB row to answer with instead of `job`.
        self.documented_job: tuple[object, ...] | None = None
        self.log: list[str] = []

    def execute(self, statement: object, params: object = None) -> FakeConn:
        text = statement if isinstance(statement, str) else statement.as_string(None)  # type: ignore[attr-defined]
        text = " ".join(text.split())
        self.log.append(text)
        self.answer: tuple[object, ...] | None = None
        if "SHOW CHANGEFEED JOBS" in text and self.documented_job:
            self.answer = self.documented_job
        elif "SHOW CHANGEFEED JOBS" in text:
            j = self.job
            self.answer = None if j is None else (j.job_id, j.status, j.high_water_timestamp)
        elif "EXISTS" in text:
            self.answer = (self.rows,)
        elif "cluster_logical_timestamp" in text:
            self.answer = (NOW,)
        elif "SHOW ZONE CONFIGURATION" in text:
            self.answer = ("TABLE messages", f"ALTER ... USING gc.ttlseconds = {TTL}")
        elif text.startswith("CREATE CHANGEFEED"):
            if self.refuse_cursor and "cursor" in text:
                raise psycopg.errors.InvalidParameterValue("cursor is older than the GC threshold")
            self.answer = (77,)
        return self

    def fetchone(self) -> tuple[object, ...] | None:
        return self.answer


def ensure(conn: FakeConn) -> list[FeedRestart]:
    markers: list[FeedRestart] = []

    def on_gap(marker: FeedRestart) -> None:
        conn.log.append("MARKER")
        markers.append(marker)

    ensure_changefeed(conn, "kafka://kafka:9092?topic_name=messages.committed", on_gap)  # type: ignore[arg-type]
    return markers


def test_gap_marker_is_written_before_the_fresh_changefeed() -> None:
    """The marker precedes the new job in the topic, so every record of it follows the boundary."""
    conn = FakeConn(job("failed", hlc(TTL * 2)), rows=True)
    markers = ensure(conn)
    assert len(markers) == 1 and markers[0].previous_job == 42 and markers[0].at == NOW
    creates = [i for i, s in enumerate(conn.log) if s.startswith("CREATE CHANGEFEED")]
    assert len(creates) == 1 and conn.log.index("MARKER") < creates[0]
    assert "cursor" not in conn.log[creates[0]]
    assert "on_error = 'pause'" in conn.log[creates[0]]


def test_changefeed_omits_virtual_columns_explicitly() -> None:
    """CREATE CHANGEFEED says `virtual_columns = 'omitted'`: the sharded index draws no warning."""
    conn = FakeConn(None, rows=False)
    ensure(conn)
    creates = [s for s in conn.log if s.startswith("CREATE CHANGEFEED")]
    assert len(creates) == 1 and "virtual_columns = 'omitted'" in creates[0]


def test_refused_cursor_falls_back_to_a_fresh_changefeed_with_a_marker() -> None:
    """When CockroachDB refuses the cursor, setup still succeeds: fresh job, marker first."""
    conn = FakeConn(job("failed", hlc(60)), rows=True, refuse_cursor=True)
    markers = ensure(conn)
    assert len(markers) == 1
    creates = [s for s in conn.log if s.startswith("CREATE CHANGEFEED")]
    assert len(creates) == 2 and "cursor" in creates[0] and "cursor" not in creates[1]


def test_live_job_is_kept_and_paused_job_resumed() -> None:
    """No CREATE next to a live job; a paused one gets RESUME JOB; no marker for either."""
    conn = FakeConn(job("retry-running"), rows=True)
    assert ensure(conn) == []
    assert not any(s.startswith(("CREATE", "RESUME")) for s in conn.log)
    conn = FakeConn(job("paused", hlc(60)), rows=True)
    assert ensure(conn) == []
    assert "RESUME JOB 42" in conn.log


def test_an_unfinished_job_is_looked_up_before_newer_finished_ones() -> None:
    """A newer failed job must not hide a live one, or setup would start a second feed."""
    conn = FakeConn(job("running"), rows=True)
    ensure(conn)
    lookup = next(s for s in conn.log if "SHOW CHANGEFEED JOBS" in s)
    order = "ORDER BY status IN ('canceled', 'failed', 'revert-failed', 'succeeded'), created DESC"
    assert order in lookup
