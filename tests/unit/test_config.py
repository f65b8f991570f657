"""Settings come from FEED_* variables; a bad one stops the process naming itself."""

from __future__ import annotations

import time
from typing import Annotated, get_origin

import msgspec
import pytest
from psycopg_pool import PoolTimeout

from feedsvc.__main__ import main
from feedsvc.config import PREFIX, ConfigError, Settings, load_settings
from feedsvc.store import open_pool


def test_defaults_without_variables() -> None:
    """No FEED_* variables gives the documented defaults; other variables are ignored."""
    assert load_settings({"PATH": "/bin", "HOME": "/root"}) == Settings()


def test_values_are_converted() -> None:
    """Numbers arrive as strings and are converted to the field's type."""
    got = load_settings({"FEED_PORT": "9000", "FEED_HEARTBEAT_S": "0.5"})
    assert (got.port, got.heartbeat_s) == (9000, 0.5)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"FEED_PORT": "eighty"}, "FEED_PORT"),
        ({"FEED_MAX_INFLIGHT": "0"}, "FEED_MAX_INFLIGHT"),
        ({"FEED_HEARTBEAT_S": "-1"}, "FEED_HEARTBEAT_S"),
        ({"FEED_MAX_INFLIGT": "10"}, "FEED_MAX_INFLIGT"),
        ({"FEED_CORS_ORIGINS": "https://ok.example,app.example"}, "FEED_CORS_ORIGINS"),
        ({"FEED_TRUSTED_PROXIES": "10.0.0.0/8,haproxy"}, "FEED_TRUSTED_PROXIES"),
    ],
)
def test_bad_variable_is_named(environ: dict[str, str], named: str) -> None:
    """A malformed, out-of-range or misspelt variable fails with its name in the message."""
    with pytest.raises(ConfigError, match=named):
        load_settings(environ)


def test_changefeed_sink_defaults_to_bootstrap() -> None:
    """CockroachDB reaches Kafka where we do unless told otherwise."""
    assert load_settings({"FEED_KAFKA_BOOTSTRAP": "k:1"}).changefeed_sink == "k:1"
    both = {"FEED_KAFKA_BOOTSTRAP": "k:1", "FEED_CHANGEFEED_KAFKA": "kafka:9092"}
    assert load_settings(both).changefeed_sink == "kafka:9092"


def test_topic_durability_defaults_suit_one_broker() -> None:
    """One copy, one in sync, and a stated 7-day retention of submitted records."""
    got = Settings()
    assert (got.topic_replication_factor, got.topic_min_insync_replicas) == (1, 1)
    assert got.submitted_retention_ms == 7 * 24 * 3600 * 1000


def test_three_broker_durability_is_accepted() -> None:
    """RF 3 with min ISR 2 (the three-broker setting) and retention forever are valid."""
    got = load_settings(
        {
            "FEED_TOPIC_REPLICATION_FACTOR": "3",
            "FEED_TOPIC_MIN_INSYNC_REPLICAS": "2",
            "FEED_SUBMITTED_RETENTION_MS": "-1",
        }
    )
    assert (got.topic_replication_factor, got.topic_min_insync_replicas) == (3, 2)
    assert got.submitted_retention_ms == -1


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"FEED_TOPIC_REPLICATION_FACTOR": "0"}, "FEED_TOPIC_REPLICATION_FACTOR"),
        ({"FEED_TOPIC_MIN_INSYNC_REPLICAS": "0"}, "FEED_TOPIC_MIN_INSYNC_REPLICAS"),
        ({"FEED_TOPIC_MIN_INSYNC_REPLICAS": "2"}, "FEED_TOPIC_MIN_INSYNC_REPLICAS=2 is above"),
        ({"FEED_SUBMITTED_RETENTION_MS": "0"}, "FEED_SUBMITTED_RETENTION_MS"),
        ({"FEED_SUBMITTED_RETENTION_MS": "-5"}, "FEED_SUBMITTED_RETENTION_MS"),
        ({"FEED_SUBMITTED_RETENTION_MS": "7d"}, "FEED_SUBMITTED_RETENTION_MS"),
    ],
)
def test_bad_durability_setting_is_named(environ: dict[str, str], named: str) -> None:
    """No copies, more in sync than copies, or a retention that deletes at once: refused by name."""
    with pytest.raises(ConfigError, match=named):
        load_settings(environ)


# Each bounded setting: the edge value it takes, and the first one it refuses.
BOUNDS = {
    "port": ("0", "-1"),
    "max_inflight": ("1", "0"),
    "max_backlog": ("1", "0"),
    "backlog_refresh_s": ("0.001", "0"),
    "kafka_timeout_s": ("0.001", "0"),
    "db_timeout_s": ("0.001", "0"),
    "submitted_partitions": ("1", "0"),
    "topic_replication_factor": ("1", "0"),
    "topic_min_insync_replicas": ("1", "0"),
    "submitted_retention_ms": ("-1", "-2"),
    "writer_batch": ("1", "0"),
    "writer_linger_ms": ("0", "-1"),
    "db_pool_size": ("1", "0"),
    "history_limit": ("1", "0"),
    "heartbeat_s": ("0.001", "-0.5"),
    "subscriber_buffer": ("1", "0"),
    "max_subscribers": ("1", "0"),
    "ring_size": ("1", "0"),
    "socket_sndbuf": ("0", "-1"),
    "shutdown_grace_s": ("0.001", "0"),
}


@pytest.mark.parametrize(("name", "edge", "beyond"), [(n, *b) for n, b in BOUNDS.items()])
def test_each_bound_takes_its_edge_and_refuses_beyond(name: str, edge: str, beyond: str) -> None:
    """The edge value of a range is a valid setting; one step past it fails naming the variable."""
    key = PREFIX + name.upper()
    assert getattr(load_settings({key: edge}), name) == float(edge)
    with pytest.raises(ConfigError, match=rf"^{key}={beyond!r}: Expected `(int|float)` >"):
        load_settings({key: beyond})


def test_port_above_65535_is_refused() -> None:
    """A TCP port has 16 bits."""
    assert load_settings({"FEED_PORT": "65535"}).port == 65535
    with pytest.raises(ConfigError, match=r"^FEED_PORT='65536': Expected `int` <= 65535$"):
        load_settings({"FEED_PORT": "65536"})


def test_every_number_states_its_range() -> None:
    """Each int or float setting carries a msgspec.Meta bound; the table above tests its edge."""
    fields = msgspec.structs.fields(Settings)
    unbounded = {f.name for f in fields if f.type in (int, float)}
    assert not unbounded, f"settings without a range: {unbounded}"
    bounded = {f.name for f in fields if get_origin(f.type) is Annotated}
    assert set(BOUNDS) <= bounded


def test_defaults_keep_their_own_constraints() -> None:
    """Every default passes the constraints the environment's values must pass."""
    defaults = Settings()
    assert msgspec.convert(msgspec.to_builtins(defaults), Settings) == defaults


@pytest.mark.parametrize("raw", ["LOUD", "", "info ", "5", "TRACE"])
def test_unknown_log_level_is_refused_with_the_choices(raw: str) -> None:
    """FEED_LOG_LEVEL must be a logging level name, or the process stops naming the choices."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"FEED_LOG_LEVEL": raw})
    assert str(caught.value) == (
        f"FEED_LOG_LEVEL={raw!r}: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )


@pytest.mark.parametrize(
    ("raw", "level"), [("debug", "DEBUG"), ("Warning", "WARNING"), ("ERROR", "ERROR")]
)
def test_log_level_is_taken_in_any_case(raw: str, level: str) -> None:
    """`info` worked before the level was checked (logging upper-cases it), so it still does."""
    assert load_settings({"FEED_LOG_LEVEL": raw}).log_level == level


def test_a_bad_log_level_stops_the_process_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`FEED_LOG_LEVEL=LOUD python -m feedsvc api` exits 2 with one line, no traceback."""
    monkeypatch.setenv("FEED_LOG_LEVEL", "LOUD")
    assert main(["api"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "feedsvc api: configuration error: FEED_LOG_LEVEL='LOUD': "
        "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL\n"
    )


def test_db_timeout_is_its_own_setting() -> None:
    """FEED_DB_TIMEOUT_S and FEED_KAFKA_TIMEOUT_S are read apart; both default to 5 s as before."""
    got = load_settings({"FEED_DB_TIMEOUT_S": "2.5", "FEED_KAFKA_TIMEOUT_S": "7"})
    assert (got.db_timeout_s, got.kafka_timeout_s) == (2.5, 7.0)
    assert Settings().db_timeout_s == Settings().kafka_timeout_s == 5.0


async def test_the_pool_waits_the_db_timeout_for_a_connection() -> None:
    """An unreachable database fails a query after FEED_DB_TIMEOUT_S, not the Kafka timeout."""
    settings = load_settings(
        {
            # Port 1 on loopback: refused at once, so the pool never gets a connection.
            "FEED_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1",
            "FEED_DB_TIMEOUT_S": "0.3",
            "FEED_KAFKA_TIMEOUT_S": "60",
        }
    )
    async with open_pool(settings, "test") as pool:
        began = time.monotonic()
        with pytest.raises(PoolTimeout):
            async with pool.connection():
                pass
        waited = time.monotonic() - began
    # Generous above: the machine is shared; the Kafka timeout would be 60 s.
    assert 0.3 <= waited < 20


def test_trusted_proxies_take_addresses_networks_or_everyone() -> None:
    """FEED_TRUSTED_PROXIES accepts IPv4 and IPv6 addresses and networks, or `*`."""
    for raw in ("127.0.0.1", "10.0.0.0/8, ::1", "fc00::/7", "*"):
        assert load_settings({"FEED_TRUSTED_PROXIES": raw}).trusted_proxies == raw
