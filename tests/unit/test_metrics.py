"""Metrics: a registry per process, request durations without /feed, sums across workers."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.response import Stream
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from feedsvc.http.access import AccessLog
from feedsvc.metrics import Metrics, prepare_multiprocess, worker_exited
from feedsvc.metrics.families import reason_kind, resolved_lag_s
from feedsvc.relay.reader import RECREATED
from feedsvc.relay.stream import BUSY

REPO = Path(__file__).resolve().parents[2]
DURATION = "feedsvc_http_request_duration_seconds"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@post("/messages", status_code=202)
async def accept() -> dict[str, str]:
    return {}


@get("/messages/{message_id:str}")
async def one(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {"id": request.path_params["message_id"]}


@get("/feed")
async def feed() -> Stream:
    async def frames() -> AsyncIterator[bytes]:
        for frame in BUSY:
            yield frame

    return Stream(frames(), media_type="text/event-stream")


def app(metrics: Metrics) -> Litestar:
    litestar = Litestar([accept, one, feed], logging_config=None)
    litestar.asgi_handler = AccessLog(litestar.asgi_handler, metrics.http)
    return litestar


async def test_request_durations_by_route_template_and_status_leave_out_the_feed() -> None:
    """POSTs and reads land in the histogram under their route template; /feed does not."""
    metrics = Metrics()
    async with AsyncTestClient(app(metrics)) as client:
        for _ in range(3):
            assert (await client.post("/messages")).status_code == 202
        assert (await client.get("/messages/abc")).status_code == 200
        assert (await client.get("/messages/def")).status_code == 200
        assert (await client.get("/feed")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.request("BREW", "/messages")).status_code == 405
    got = samples(metrics.render().decode())

    def count(method: str, route: str, status: str) -> float | None:
        labels = (("method", method), ("route", route), ("status", status))
        return got.get((f"{DURATION}_count", labels))

    assert count("POST", "/messages", "202") == 3
    assert count("GET", "/messages/{message_id}", "200") == 2
    assert count("GET", "unmatched", "404") == 1
    assert count("other", "unmatched", "405") == 1, "invented methods share one label"
    assert not [k for k in got if ("route", "/feed") in k[1]], "the feed is not timed"


async def test_a_second_registry_does_not_collide_with_the_first() -> None:
    """Two `Metrics` in one process (two roles, two tests) count separately."""
    first, second = Metrics(), Metrics()
    first.posts.accepted.inc(2)
    second.posts.accepted.inc()
    assert first.registry.get_sample_value("feedsvc_posts_accepted_total") == 2
    assert second.registry.get_sample_value("feedsvc_posts_accepted_total") == 1


async def test_followed_values_are_copied_in_at_each_render() -> None:
    """A gauge follows its source and a counter a running total, both as of the render."""
    metrics = Metrics()
    inflight, published = 0, 0
    metrics.follow(metrics.posts.inflight, lambda: inflight)
    metrics.count(metrics.feed.events, lambda: published)
    inflight, published = 5, 7
    first = samples(metrics.render().decode())
    inflight, published = 2, 9
    second = samples(metrics.render().decode())
    assert first[("feedsvc_posts_inflight", ())] == 5
    assert first[("feedsvc_feed_events_total", ())] == 7
    assert second[("feedsvc_posts_inflight", ())] == 2
    assert second[("feedsvc_feed_events_total", ())] == 9


def test_reset_and_resume_reasons_become_few_labels() -> None:
    """Every reason text of the relay maps to its kind; free text falls to `other`."""
    assert reason_kind("the client fell behind; reconnect to resume") == "lagging"
    assert reason_kind("the server is shutting down") == "shutdown"
    assert reason_kind("unknown position: Last-Event-ID is ahead of this feed") == (
        "unknown_position"
    )
    assert reason_kind(f"position 12-ab is gone: {RECREATED}") == "topic_recreated"
    assert reason_kind("the feed's reader fell behind the topic's retention") == "retention"
    for gap in (
        "job is failed and never reached a high-water mark",
        "no changefeed job is visible (finished jobs are listed for 12 hours only)",
        "creating from the high-water mark failed: boom",
    ):
        assert reason_kind(gap) == "changefeed_gap", gap
    assert reason_kind("something new") == "other"


def test_relay_lag_is_seconds_since_the_resolved_timestamp() -> None:
    """An HLC of ten seconds ago is a lag of about ten seconds; none yet is no value."""
    import time

    ten_s_ago = int((time.time() - 10) * 1e9) * 10**10 + 3
    lag = resolved_lag_s(ten_s_ago)
    assert lag is not None and 9.5 < lag < 15
    assert resolved_lag_s(None) is None


def _worker(posts: int, conn: Connection) -> None:
    """One api worker's metrics: `posts` accepted, in flight and timed; renders on request."""
    metrics = Metrics()
    metrics.posts.accepted.inc(posts)
    metrics.follow(metrics.posts.inflight, lambda: posts)
    metrics.http.observe("POST", "/messages", 202, 0.01 * posts)
    metrics.refresh()
    conn.send("ready")
    while (order := conn.recv()) != "stop":
        assert order == "render"
        conn.send(metrics.render().decode())


def launch(directory: str) -> None:
    """A launcher: two workers (one forked, one spawned), each scraped, one exiting first."""
    Path(directory).mkdir()
    (Path(directory) / "counter_1.db").write_bytes(b"an earlier run's file")
    prepare_multiprocess(directory)
    workers = []
    fork, spawn = multiprocessing.get_context("fork"), multiprocessing.get_context("spawn")
    for context, posts in ((fork, 3), (spawn, 4)):
        ours, theirs = context.Pipe()
        process = context.Process(target=_worker, args=(posts, theirs))
        process.start()
        assert ours.recv() == "ready"
        workers.append((process, ours))
    (first, first_conn), (second, second_conn) = workers
    first_conn.send("render")
    both = first_conn.recv()
    second_conn.send("stop")
    second.join()
    worker_exited(second.pid or 0)
    first_conn.send("render")
    one_left = first_conn.recv()
    first_conn.send("stop")
    first.join()
    print(json.dumps([both, one_left]))


def test_workers_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    """Scraping one of two workers shows both summed; an exited worker's live gauge goes."""
    # A process of its own: the switch to multiprocess mode is process-wide.
    code = f"from tests.unit.test_metrics import launch; launch({str(tmp_path / 'm')!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    both, one_left = (samples(text) for text in json.loads(done.stdout.splitlines()[-1]))
    post = (("method", "POST"), ("route", "/messages"), ("status", "202"))
    assert both[("feedsvc_posts_accepted_total", ())] == 7
    assert both[("feedsvc_posts_inflight", ())] == 7
    assert both[(f"{DURATION}_count", post)] == 2
    assert both[(f"{DURATION}_sum", post)] == pytest.approx(0.07)
    # Counters and histograms keep what the exited worker did; its live gauge is gone.
    assert one_left[("feedsvc_posts_accepted_total", ())] == 7
    assert one_left[(f"{DURATION}_count", post)] == 2
    assert one_left[("feedsvc_posts_inflight", ())] == 3
