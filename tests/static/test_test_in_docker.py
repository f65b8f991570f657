"""scripts/test-in-docker against a fake `docker`: what a failed run leaves to read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
    reason="static checks run in native mode, not inside the test container",
)

FAKE_DOCKER = r"""#!/usr/bin/env bash
echo "$*" >>"$FAKE_CALLS"
shift 5  # compose --project-name P --profile test
case "$*" in
  "build --quiet") exit 0 ;;
  run\ --rm\ tests*) exit "$FAKE_PYTEST_STATUS" ;;
  "ps --all") echo "NAME STATUS" ;;
  "config --services") printf '%s\n' roach1 setup tests ;;
  logs*) echo "the log of ${*: -1}" ;;
  down*) exit 0 ;;
  *) echo "fake docker: unexpected call: $*" >&2; exit 3 ;;
esac
"""


def _run(tmp_path: Path, pytest_status: int) -> tuple[int, list[str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    calls = tmp_path / "calls"
    logs = tmp_path / "logs"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_CALLS": str(calls),
        "FAKE_PYTEST_STATUS": str(pytest_status),
        "FEEDSVC_TEST_LOGS": str(logs),
    }
    done = subprocess.run(
        [str(ROOT / "scripts" / "test-in-docker")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, calls.read_text().splitlines(), logs


def test_a_failed_run_keeps_every_service_log_before_removing_the_project(
    tmp_path: Path,
) -> None:
    """When pytest fails, each service's full log is written before `down` deletes it."""
    status, calls, logs = _run(tmp_path, pytest_status=1)
    assert status == 1
    for service in ("roach1", "setup", "tests"):
        assert (logs / f"{service}.log").read_text() == f"the log of {service}\n", service
    down = next(i for i, call in enumerate(calls) if " down " in f"{call} ")
    assert all(i < down for i, call in enumerate(calls) if " logs " in call)


def test_a_green_run_writes_no_logs(tmp_path: Path) -> None:
    """A passing run removes the project and leaves no log directory behind."""
    status, calls, logs = _run(tmp_path, pytest_status=0)
    assert status == 0
    assert not logs.exists()
    assert any(" down " in f"{call} " for call in calls)
