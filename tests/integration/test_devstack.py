"""The native stack's building blocks keep their data across restarts and crashes."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack import (
    KafkaBroker,
    Postgres,
    Service,
    Stack,
    StackError,
    free_port,
    scratch_dir,
)
from tests.support import native_only

pytestmark = [pytest.mark.stack, native_only]


def _count(pg: Postgres, database: str, marker: str) -> int:
    with psycopg.connect(pg.url(database)) as conn:
        row = conn.execute("SELECT count(*) FROM notes WHERE body = %s", (marker,)).fetchone()
        assert row is not None
        return int(row[0])


def test_postgres_keeps_committed_rows_across_stop_and_kill(postgres: Postgres) -> None:
    """A committed row survives a clean stop and a SIGKILL of the server."""
    postgres.create_database("stacktest")
    postgres.create_database("stacktest")  # idempotent
    marker = uuid.uuid4().hex
    with psycopg.connect(postgres.url("stacktest")) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (body text)")
        conn.execute("INSERT INTO notes VALUES (%s)", (marker,))

    postgres.stop()
    assert not postgres.running
    postgres.start()
    assert _count(postgres, "stacktest", marker) == 1

    postgres.kill()
    assert not postgres.running
    postgres.start()
    assert _count(postgres, "stacktest", marker) == 1


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                values.extend(r.value for r in records if r.value is not None)
        return values
    finally:
        await consumer.stop()


async def test_kafka_keeps_acknowledged_records_across_stop_and_kill(
    kafka: KafkaBroker,
) -> None:
    """Records acknowledged with acks=all are still there after a clean stop and a SIGKILL."""
    topic = f"stacktest-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    await _produce(kafka.bootstrap, topic, b"before-stop")

    kafka.stop()
    assert not kafka.running
    kafka.start()
    await _produce(kafka.bootstrap, topic, b"before-kill")

    kafka.kill()
    assert not kafka.running
    kafka.start()
    assert await _read_all(kafka.bootstrap, topic) == [b"before-stop", b"before-kill"]


def test_service_waits_for_http_and_stops_on_sigterm(root: Path) -> None:
    """A service is ready once its URL answers 200 and exits when terminated."""
    port = free_port()
    svc = Service(
        "http",
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        {},
        root / "logs" / "http.log",
        cwd=root,
    )
    svc.start()
    try:
        svc.wait_http_ok(f"http://127.0.0.1:{port}/", timeout=20)
        assert svc.pid is not None
    finally:
        svc.terminate(timeout=10)
    assert not svc.running
    assert svc.returncode is not None


def test_service_that_exits_fails_the_readiness_wait_with_its_log(root: Path) -> None:
    """A process that dies before it is ready fails the wait at once, showing its output."""
    svc = Service(
        "broken",
        [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
        {},
        root / "logs" / "broken.log",
    )
    svc.start()
    with pytest.raises(StackError, match="boom"):
        svc.wait_http_ok(f"http://127.0.0.1:{free_port()}/", timeout=20)
    assert svc.returncode == 3


def test_stack_up_is_idempotent_and_down_stops_everything() -> None:
    """A second `up` leaves running pieces alone; `down` stops them all, from any instance."""
    root = scratch_dir()
    try:
        stack = Stack(root, roles=("writer", "api"), log=lambda _: None)
        stack.up()
        try:
            assert all(stack.status().values())
            pids = dict(stack.state["pids"])
            assert httpx.get(f"{stack.api_url}/health/ready", timeout=5).status_code == 200

            again = Stack(root, roles=("writer", "api"), log=lambda _: None)
            again.up()
            assert again.state["pids"] == pids
            assert again.api_url == stack.api_url
        finally:
            stack.down()
        assert not any(Stack(root, log=lambda _: None).status().values())
    finally:
        shutil.rmtree(root, ignore_errors=True)
