"""Setup's topics on a real broker: created with the configured durability and retention."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devstack import KafkaBroker
from feedsvc.config import Settings, load_settings
from feedsvc.kafka import (
    COMMITTED,
    DLQ,
    SUBMITTED,
    admin,
    describe_topic_configs,
    ensure_topics,
    replication_factors,
)
from tests.support import native_only, wait_for

pytestmark = [pytest.mark.stack, native_only]

TOPICS = [SUBMITTED, COMMITTED, DLQ]


@pytest.fixture
async def client(kafka: KafkaBroker) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client on the module's broker, with none of feedsvc's topics on it yet."""
    async with admin(Settings(kafka_bootstrap=kafka.bootstrap)) as client:
        present = [t for t in TOPICS if t in await client.list_topics()]
        if present:
            await client.delete_topics(present)

            async def left() -> list[str]:
                return [t for t in TOPICS if t in await client.list_topics()]

            await wait_for(left, lambda names: not names, 30, "the topics deleted")
        yield client


def settings(kafka: KafkaBroker, **env: str) -> Settings:
    return load_settings({"FEED_KAFKA_BOOTSTRAP": kafka.bootstrap, **env})


async def configs_of(client: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """The topics' configs, once the broker's metadata knows the (re)created topics."""

    async def describe() -> dict[str, dict[str, str]] | None:
        try:
            return await describe_topic_configs(client, names)
        except KafkaError:
            return None

    found = await wait_for(describe, lambda got: got is not None, 30, f"configs of {names}")
    assert found is not None
    return found


async def test_topics_are_created_with_the_configured_configs(
    client: AIOKafkaAdminClient, kafka: KafkaBroker
) -> None:
    """Partitions, replication factor, min.insync.replicas and retention.ms read back as set."""
    wanted = settings(kafka, FEED_SUBMITTED_PARTITIONS="3", FEED_SUBMITTED_RETENTION_MS="3600000")
    assert sorted(await ensure_topics(client, wanted)) == sorted(TOPICS)
    configs = await configs_of(client, TOPICS)
    assert configs[SUBMITTED]["retention.ms"] == "3600000"
    assert configs[SUBMITTED]["retention.bytes"] == "-1"
    assert {configs[t]["min.insync.replicas"] for t in TOPICS} == {"1"}
    assert await replication_factors(client, TOPICS) == dict.fromkeys(TOPICS, 1)
    described = {t["topic"]: len(t["partitions"]) for t in await client.describe_topics(TOPICS)}
    assert described == {SUBMITTED: 3, COMMITTED: 1, DLQ: 1}


async def test_defaults_state_the_retention_of_submitted_records(
    client: AIOKafkaAdminClient, kafka: KafkaBroker
) -> None:
    """With no settings, messages.submitted keeps records 7 days, set on the topic itself."""
    await ensure_topics(client, settings(kafka))
    configs = await configs_of(client, [SUBMITTED])
    assert configs[SUBMITTED]["retention.ms"] == str(7 * 24 * 3600 * 1000)


async def test_a_second_run_creates_nothing_and_warns_of_drift(
    client: AIOKafkaAdminClient, kafka: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Existing topics are left alone; a setting they do not match is named in a warning."""
    await ensure_topics(client, settings(kafka))
    await configs_of(client, TOPICS)  # the broker knows them: the drift check can read them
    with caplog.at_level(logging.WARNING, logger="feedsvc.kafka"):
        assert await ensure_topics(client, settings(kafka)) == []
        assert not caplog.records
        changed = settings(kafka, FEED_SUBMITTED_RETENTION_MS="60000")
        assert await ensure_topics(client, changed) == []
    drift = [r for r in caplog.records if getattr(r, "topic", None) == SUBMITTED]
    assert len(drift) == 1
    assert drift[0].differences == {  # type: ignore[attr-defined]
        "retention.ms": {"topic": str(7 * 24 * 3600 * 1000), "settings": "60000"}
    }


async def test_a_replication_factor_the_cluster_cannot_meet_fails_setup(
    client: AIOKafkaAdminClient, kafka: KafkaBroker
) -> None:
    """RF 2 on one broker: setup fails naming the topic, instead of going on without it."""
    with pytest.raises(KafkaError, match="cannot create topic messages"):
        await ensure_topics(client, settings(kafka, FEED_TOPIC_REPLICATION_FACTOR="2"))
