"""cockroach/init-cluster.sh: `cockroach init` once, and a re-run on a live cluster is success.

The script runs against a fake `cockroach` on PATH that prints a given answer and
exits with a given status, as the real one does on a fresh cluster, on an
initialized one, and when it cannot reach the node.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "cockroach" / "init-cluster.sh"

# The static checks run natively (CI, ./test.sh without Docker); the test image of
# scripts/test-in-docker has neither the compose files nor a Compose CLI.
pytestmark = pytest.mark.skipif(
    os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
    reason="static checks run in native mode, not inside the test container",
)

FAKE_COCKROACH = """#!/usr/bin/env bash
args="$*"
printf '%s\\n' "${args//$'\\n'/ }" >>"$FAKE_ARGS_FILE"
if [ "$1" = sql ]; then exit "${FAKE_SQL_STATUS:-0}"; fi
printf '%s\\n' "$FAKE_OUTPUT"
exit "$FAKE_STATUS"
"""


def run_init(
    tmp_path: Path, output: str, status: int, host: str | None = None, sql_status: int = 0
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the script with the fake answering `output` and `status`; returns its calls too."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "cockroach"
    fake.write_text(FAKE_COCKROACH)
    fake.chmod(0o755)
    args_file = tmp_path / "args"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_OUTPUT": output,
        "FAKE_STATUS": str(status),
        "FAKE_ARGS_FILE": str(args_file),
        "FAKE_SQL_STATUS": str(sql_status),
    }
    if host is not None:
        env["COCKROACH_INIT_HOST"] = host
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return done, args_file.read_text().splitlines()


def test_fresh_cluster_is_initialized(tmp_path: Path) -> None:
    """A first init exits 0 after one `cockroach init` against roach1, then records its time."""
    done, calls = run_init(tmp_path, "Cluster successfully initialized", 0)
    assert done.returncode == 0
    assert calls[0] == "init --insecure --host=roach1:26257"
    assert "Cluster successfully initialized" in done.stdout
    assert len(calls) == 2 and calls[1].startswith("sql --insecure --host=roach1:26257")
    assert "INSERT INTO feedsvc.cluster_init SELECT now()" in calls[1]


def test_failing_to_record_the_init_time_is_only_a_warning(tmp_path: Path) -> None:
    """The init time is for run.sh's licence notice; not recording it does not fail the stack."""
    done, _ = run_init(tmp_path, "Cluster successfully initialized", 0, sql_status=1)
    assert done.returncode == 0
    assert "could not record" in done.stderr


@pytest.mark.parametrize(
    "answer",
    [
        'ERROR: cluster has already been initialized with ID 8c1a\nFailed running "init"',
        "Error: rpc error: code = AlreadyExists desc = cluster has already been initialized",
    ],
)
def test_initialized_cluster_counts_as_success(tmp_path: Path, answer: str) -> None:
    """On an initialized cluster `cockroach init` fails, and the script exits 0 quietly."""
    done, calls = run_init(tmp_path, answer, 1)
    assert done.returncode == 0
    assert "already initialized" in done.stdout
    assert done.stderr == ""
    assert len(calls) == 1, "the init time is recorded only by the init that created the cluster"


@pytest.mark.parametrize("status", [1, 7])
def test_other_failures_fail_with_the_answer_shown(tmp_path: Path, status: int) -> None:
    """Any other failure keeps its exit status and shows what cockroach said."""
    answer = "ERROR: cannot dial server.\nIs the server running?"
    done, _ = run_init(tmp_path, answer, status)
    assert done.returncode == status
    assert "cannot dial server" in done.stderr


def test_host_can_be_set(tmp_path: Path) -> None:
    """COCKROACH_INIT_HOST names the one node that init talks to."""
    _, calls = run_init(tmp_path, "Cluster successfully initialized", 0, host="roach2:26257")
    assert calls[0] == "init --insecure --host=roach2:26257"
    assert calls[1].startswith("sql --insecure --host=roach2:26257")
