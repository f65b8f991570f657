"""`scripts/bench`, run as a user would: a scenario ends with its JSON result line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import native_only

pytestmark = [pytest.mark.stack, pytest.mark.slow, native_only]

REPO = Path(__file__).resolve().parents[3]


def test_ingest_quick_prints_its_figures_as_the_last_stdout_line() -> None:
    """`scripts/bench ingest --quick` exits 0; its last stdout line is the JSON result."""
    done = subprocess.run(
        [str(REPO / "scripts" / "bench"), "ingest", "--quick"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["scenario"] == "ingest"
    for key in (
        "accepted_per_s", "stored_per_s", "post_p50_ms", "post_p99_ms", "lost", "duplicates",
        "baseline_post_per_s", "ratio_to_baseline", "api_cpu_us_per_post",
        "baseline_cpu_us_per_request",
    ):  # fmt: skip
        assert key in result, key
    assert result["accepted_per_s"] > 0
    # Through the front door by default, with the proxy's cost measured beside it.
    assert result["conditions"]["path"].startswith("proxy")
    assert result["conditions"]["proxy_cost"]["direct_accepted_per_s"] > 0
    assert result["lost"] == 0 and result["duplicates"] == 0
    assert "--- ingest ---" in done.stderr  # the human summary goes to stderr
