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
printf '%s\\n' "$*" >"$FAKE_ARGS_FILE"
printf '%s\\n' "$FAKE_OUTPUT"
exit "$FAKE_STATUS"
"""


def run_init(
    tmp_path: Path, output: str, status: int, host: str | None = None
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the script with the fake answering `output` and `status`; returns its args too."""
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
    }
    if host is not None:
        env["COCKROACH_INIT_HOST"] = host
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return done, args_file.read_text().strip()


def test_fresh_cluster_is_initialized(tmp_path: Path) -> None:
    """A first init that succeeds exits 0 after one `cockroach init` against roach1."""
    done, args = run_init(tmp_path, "Cluster successfully initialized", 0)
    assert done.returncode == 0
    assert args == "init --insecure --host=roach1:26257"
    assert "Cluster successfully initialized" in done.stdout


@pytest.mark.parametrize(
    "answer",
    [
        'ERROR: cluster has already been initialized with ID 8c1a\nFailed running "init"',
        "Error: rpc error: code = AlreadyExists desc = cluster has already been initialized",
    ],
)
def test_initialized_cluster_counts_as_success(tmp_path: Path, answer: str) -> None:
    """On an initialized cluster `cockroach init` fails, and the script exits 0 quietly."""
    done, _ = run_init(tmp_path, answer, 1)
    assert done.returncode == 0
    assert "already initialized" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize("status", [1, 7])
def test_other_failures_fail_with_the_answer_shown(tmp_path: Path, status: int) -> None:
    """Any other failure keeps its exit status and shows what cockroach said."""
    answer = "ERROR: cannot dial server.\nIs the server running?"
    done, _ = run_init(tmp_path, answer, status)
    assert done.returncode == status
    assert "cannot dial server" in done.stderr


def test_host_can_be_set(tmp_path: Path) -> None:
    """COCKROACH_INIT_HOST names the one node that init talks to."""
    _, args = run_init(tmp_path, "Cluster successfully initialized", 0, host="roach2:26257")
    assert args == "init --insecure --host=roach2:26257"
