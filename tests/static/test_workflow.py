"""The CI workflow runs the issue's drills with commands that exist in this repository.

actionlint (scripts/check-static) checks the workflow's syntax and its shell; these
tests check what it does, and scripts/changefeed-running against a fake `docker`.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.static.steps import assert_in_order

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "docker.yml"

pytestmark = pytest.mark.skipif(
    os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
    reason="static checks run in native mode, not inside the test container",
)


def jobs() -> dict[str, str]:
    """Each job's text, by job id (the two-space indented keys under `jobs:`)."""
    text = WORKFLOW.read_text().split("\njobs:\n", 1)[1]
    parts = re.split(r"^  ([a-z][a-z0-9_-]*):\n", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_workflow_runs_on_push_and_pull_request() -> None:
    """Every push and pull request is proven."""
    text = WORKFLOW.read_text()
    assert re.search(r"^on:\n  push:\n  pull_request:\n", text, flags=re.MULTILINE)


def test_docker_job_runs_the_steps_in_order() -> None:
    """test.sh alone, run.sh + smoke, re-run, node and coordinator drills, Kafka drill,
    stop/start/purge, logs."""
    docker = jobs()["docker"]
    steps = [
        "run: ./test.sh",
        "run: ./run.sh",
        "python3 scripts/smoke.py check",
        "SELECT count(*) FROM messages WHERE id =",
        "scripts/changefeed-running",
        "docker compose ps --all --quiet",
        "docker compose stop roach2",
        "docker compose start roach2",
        'docker compose stop "$coordinator"',
        'docker compose start "$coordinator"',
        "--allow 503 --require 503",
        "docker compose restart kafka",
        "          ./stop.sh\n",
        "          ./stop.sh --purge\n",
        "docker compose logs",
        "actions/upload-artifact",
    ]
    assert_in_order(docker, steps)
    assert docker.count("if: failure()") == 2


def _step(name: str) -> str:
    """The text of the docker job's step whose name starts with `name`."""
    parts = re.split(r"^      - ", jobs()["docker"], flags=re.MULTILINE)
    found = [part for part in parts if part.startswith(f"name: {name}")]
    assert len(found) == 1, name
    return found[0]


def test_the_suite_runs_before_the_stack_starts() -> None:
    """./test.sh (Docker mode) comes before the first ./run.sh, so the two never overlap."""
    docker = jobs()["docker"]
    assert docker.index("run: ./test.sh") < docker.index("run: ./run.sh")
    assert "FEEDSVC_TEST_LOGS: compose-logs/" in _step("./test.sh")


def test_the_rerun_check_reads_what_compose_said() -> None:
    """The re-run greps the file run.sh keeps Compose's output in, not run.sh's stdout."""
    step = _step("./run.sh again")
    kept = re.search(r"FEEDSVC_RUN_LOG=(\S+) \./run\.sh", step)
    assert kept, step
    assert re.search(r"grep -Ei '[^']*recreat[^']*'[^\n]*" + re.escape(kept.group(1)), step)


def test_the_restart_check_counts_the_drills_messages() -> None:
    """After ./stop.sh and ./run.sh, the messages the drills accepted are counted by id."""
    step = _step("./stop.sh, ./run.sh")
    for ids in ("node-drill.ids", "coordinator-drill.ids", "kafka-drill.ids"):
        assert ids in step, ids
    assert "WHERE id IN ($list)" in step
    assert '[ "$count" = "$expected" ]' in step
    assert '"$count" -gt 0' not in step


def test_the_coordinator_drill_stops_the_changefeeds_node() -> None:
    """The drill stops the node changefeed-running names, with a stall bound and no reset."""
    step = _step("Coordinator drill")
    assert "scripts/changefeed-running | sed -n 's/^changefeed [0-9]* is running on //p'" in step
    assert "--feed-bound 60 --no-reset" in step


def test_native_job_runs_the_suite_without_docker() -> None:
    """The second job runs ./test.sh (through .ci/run) in native mode."""
    native = jobs()["native"]
    assert "FEEDSVC_TEST_MODE: native" in native
    assert "run: .ci/run" in native
    assert 'python: ["3.11", "3.13"]' in native
    assert "UV_PYTHON: ${{ matrix.python }}" in native


def test_every_script_the_workflow_calls_exists() -> None:
    """Each scripts/… and ./… command in the workflow is an executable file here."""
    text = WORKFLOW.read_text()
    called = set(re.findall(r"(?<![\w/])((?:scripts|\.ci)/[\w./-]+|\./[\w-]+\.sh)", text))
    assert called
    for path in called:
        file = ROOT / path
        assert file.is_file(), path
        assert path.endswith(".py") or os.access(file, os.X_OK), path


FAKE_DOCKER = r"""#!/usr/bin/env bash
case " $FAKE_DOWN_NODES " in *" $4 "*) exit 1 ;; esac
case "$*" in
  *"SHOW CHANGEFEED JOBS"*)
    n=$(($(cat "$FAKE_COUNT" 2>/dev/null || echo 0) + 1)); echo "$n" >"$FAKE_COUNT"
    printf 'job_id\tstatus\tcoordinator\n'
    if [ "$n" -lt "$FAKE_RUNNING_AFTER" ]; then printf '7\tpending\troach1\n'; exit 0; fi
    printf '%b' "$FAKE_JOBS" ;;
  *) exit 3 ;;
esac
"""


def changefeed_running(
    tmp_path: Path, jobs: str, running_after: int = 1, down_nodes: str = ""
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_JOBS": jobs,
        "FAKE_COUNT": str(tmp_path / "count"),
        "FAKE_RUNNING_AFTER": str(running_after),
        "FAKE_DOWN_NODES": down_nodes,
        "FEEDSVC_CHANGEFEED_TIMEOUT": "6",
    }
    return subprocess.run(
        [str(ROOT / "scripts" / "changefeed-running")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_one_running_changefeed_passes(tmp_path: Path) -> None:
    """Exactly one unfinished job, and it runs: exit 0, naming it."""
    done = changefeed_running(tmp_path, "7\\trunning\\troach2\\n")
    assert done.returncode == 0, done.stderr
    assert "changefeed 7 is running on roach2" in done.stdout


def test_changefeed_is_checked_with_roach1_down(tmp_path: Path) -> None:
    """With roach1 stopped the question goes to another node and still passes."""
    done = changefeed_running(tmp_path, "7\\trunning\\troach2\\n", down_nodes="roach1")
    assert done.returncode == 0, done.stderr
    assert "changefeed 7 is running on roach2" in done.stdout


def test_a_pending_changefeed_is_waited_for(tmp_path: Path) -> None:
    """A job that is still pending after a restart gets a bounded wait."""
    done = changefeed_running(tmp_path, "7\\trunning\\troach1\\n", running_after=2)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "jobs", ["7\\trunning\\troach1\\n8\\trunning\\troach2\\n", "7\\tpaused\\troach1\\n", ""]
)
def test_two_changefeeds_or_none_running_fail(tmp_path: Path, jobs: str) -> None:
    """A second changefeed, a paused one, or none at all fails after the timeout."""
    done = changefeed_running(tmp_path, jobs)
    assert done.returncode == 1
    assert "not exactly one running changefeed job" in done.stderr
