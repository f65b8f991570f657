"""The port of a process without a server of its own: /metrics, /health/live, /health/ready."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from feedsvc.metrics.port import serving


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize(("ready", "status"), [(True, 200), (False, 503)])
def test_ready_answers_what_the_process_says(ready: bool, status: int) -> None:
    """/health/ready is 200 while `ready()` holds and 503 otherwise; /health/live is 200."""
    with serving("127.0.0.1", 0, lambda: b"", lambda: ready) as port:
        assert status_of(f"http://127.0.0.1:{port}/health/ready") == status
        assert status_of(f"http://127.0.0.1:{port}/health/live") == 200


def test_metrics_is_the_rendered_exposition_and_other_paths_are_404() -> None:
    """/metrics is `render()`'s bytes as Prometheus text; any other path is 404."""
    with serving("127.0.0.1", 0, lambda: b"up 1\n", lambda: True) as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert answer.read() == b"up 1\n"
            assert answer.headers["Content-Type"].startswith("text/plain")
        assert status_of(f"http://127.0.0.1:{port}/metrics/x") == 404
