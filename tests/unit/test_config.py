"""Settings come from FEED_* variables; a bad one stops the process naming itself."""

from __future__ import annotations

import pytest

from feedsvc.config import ConfigError, Settings, load_settings


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
