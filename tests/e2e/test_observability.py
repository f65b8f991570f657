"""A real Prometheus scrapes a running native stack while posts flow: every query of the
dashboard and every rule of observability/alerts.yml returns series."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from devstack import Service, Stack, free_port
from feedsvc.kafka import SUBMITTED
from tests.e2e.test_feed import open_feed
from tests.support import native_only, wait_for

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "observability"

pytestmark = native_only


def dashboard_queries() -> list[str]:
    dashboard = json.loads((OBSERVABILITY / "grafana/dashboards/feedsvc.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def rule_queries() -> list[str]:
    """Every rule's expression; an alert's with `bool` comparisons, so it has series whether
    it fires or not (a plain comparison keeps only the series that cross the bound)."""
    rules = (OBSERVABILITY / "alerts.yml").read_text()
    records = re.findall(r"- record: (\S+)", rules)
    exprs = [e.strip() for e in re.findall(r"expr: (.+)", rules)]
    return records + [re.sub(r" (>|<|==|!=|>=|<=) (?=[0-9])", r" \1 bool ", e) for e in exprs]


@contextmanager
def prometheus(stack: Stack, tmp: Path, apis: list[str]) -> Iterator[str]:
    """Debian's Prometheus scraping `apis` and the stack's writer every second, with our rules."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: scripts/bootstrap installs Debian's package")
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(OBSERVABILITY / "alerts.yml")],
                "scrape_configs": [
                    {"job_name": "feedsvc-api", "static_configs": [{"targets": apis}]},
                    {
                        "job_name": "feedsvc-writer",
                        "static_configs": [{"targets": [stack.writer_url.split("//")[1]]}],
                    },
                ],
            }
        )
    )
    server = Service(
        "prometheus",
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        {"PATH": "/usr/bin:/bin"},
        tmp / "prometheus.log",
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_http_ok(f"{url}/-/ready", 60)
        yield url
    finally:
        server.terminate(15)


async def test_every_dashboard_and_rule_query_returns_series(
    make_stack: Callable[..., Stack], author: str, tmp_path: Path
) -> None:
    """Posts flowing, a feed open, a poison record, Kafka frozen: every query has series."""
    stack = make_stack({"FEED_MAX_INFLIGHT": "4", "FEED_KAFKA_TIMEOUT_S": "1"})
    broker = stack.kafka.pid
    assert broker is not None
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(SUBMITTED, b"not a message", key=author.encode())
    finally:
        await producer.stop()
    queries = dashboard_queries() + rule_queries()
    with prometheus(stack, tmp_path, [stack.api_url.split("//")[1]]) as prom:
        async with (
            httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
            open_feed(stack.api_url, {"limit": 0}) as sse,
            anyio.create_task_group() as tasks,
        ):

            async def post(text: str) -> None:
                await http.post("/messages", json={"author": author, "text": text})

            async def flow() -> None:
                for i in range(100_000):
                    async with anyio.create_task_group() as burst:
                        for j in range(8):
                            burst.start_soon(post, f"flow {i} {j}")
                    await anyio.sleep(0.1)

            async def read() -> None:
                while await sse.next(30) is not None:
                    pass

            async def refused() -> set[str]:
                text = (await http.get("/metrics")).text
                return set(re.findall(r'feedsvc_posts_refused_total\{.*status="(\d+)"', text))

            tasks.start_soon(flow)
            tasks.start_soon(read)
            # A frozen broker: 4 posts wait in flight (the rest get 429), then time out (503).
            os.kill(broker, signal.SIGSTOP)
            try:
                await wait_for(refused, lambda got: {"429", "503"} <= got, 30, "429s and 503s")
            finally:
                os.kill(broker, signal.SIGCONT)

            async def empty() -> list[str]:
                answers = [
                    (await http.get(f"{prom}/api/v1/query", params={"query": q})).json()
                    for q in queries
                ]
                return [q for q, a in zip(queries, answers, strict=True) if not a["data"]["result"]]

            # Rates need two scrapes of a counter; the sampled delivery histogram needs 16
            # events per client after Kafka is back.
            await wait_for(empty, lambda missing: not missing, 120, "series for every query")
            up = (await http.get(f"{prom}/api/v1/query", params={"query": "up"})).json()
            tasks.cancel_scope.cancel()
    assert [r["value"][1] for r in up["data"]["result"]] == ["1", "1"], up
