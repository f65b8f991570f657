"""run.sh and stop.sh drive Docker as documented, checked against a fake `docker` CLI.

The fake answers each `docker ...` call from a table and logs the calls, so these
tests cover the scripts' own logic (version check, failure report, URLs, purge)
without a Docker engine.
"""

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
case "$*" in
  info) exit 0 ;;
  "compose version --short") echo "$FAKE_COMPOSE_VERSION" ;;
  "compose build") echo built ;;
  compose\ up*)
    if [ -n "$FAKE_UP_ERROR" ]; then echo "$FAKE_UP_ERROR" >&2; exit 1; fi ;;
  "compose ps --all --quiet") printf '%s\n' c1 c2 c3 c4 c5 c6 ;;
  inspect\ --format*)
    [ "${*: -6}" = "c1 c2 c3 c4 c5 c6" ] || exit 4
    printf '%s\n' 'roach1|running|healthy|0' 'roach-init|exited||0' 'kafka|running|healthy|0' \
      'setup|exited||1' 'writer|restarting|unhealthy|1' 'writer|restarting|unhealthy|1' ;;
  "compose config --services")
    printf '%s\n' roach1 roach-init kafka setup writer api ;;
  compose\ logs*) echo "last lines of ${*: -1}" ;;
  "compose port api 8000") echo 127.0.0.1:18000 ;;
  compose\ port*) echo 127.0.0.1:1 ;;
  compose\ down*) ;;
  *) echo "fake docker: unexpected call: $*" >&2; exit 3 ;;
esac
"""


def run(
    tmp_path: Path, script: str, *args: str, version: str = "2.29.1", up_error: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a script with the fake docker first on PATH; returns its result and the calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_CALLS": str(calls),
        "FAKE_COMPOSE_VERSION": version,
        "FAKE_UP_ERROR": up_error,
    }
    done = subprocess.run(
        [str(ROOT / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, calls.read_text().splitlines()


def test_run_starts_waits_and_prints_the_urls(tmp_path: Path) -> None:
    """A healthy start builds, waits with a timeout, and prints the published addresses."""
    done, calls = run(tmp_path, "run.sh")
    assert done.returncode == 0, done.stderr
    assert "compose build" in calls
    assert "compose up --detach --wait --wait-timeout 600 --quiet-pull" in calls
    assert "http://127.0.0.1:18000/" in done.stdout
    assert "http://127.0.0.1:18000/schema" in done.stdout
    assert "cockroach sql --insecure" in done.stdout
    assert not any("down" in call or "volume" in call for call in calls)


def test_run_names_the_failed_service_with_its_logs(tmp_path: Path) -> None:
    """When the wait fails, run.sh names the broken service, shows its logs, and fails."""
    done, _ = run(tmp_path, "run.sh", up_error="service setup didn't complete successfully")
    assert done.returncode == 1
    assert "setup is exited, exit status 1" in done.stderr
    assert "last lines of setup" in done.stderr
    assert "api was not started" in done.stderr
    assert done.stderr.count("== writer is restarting, unhealthy;") == 1
    assert "roach1 is" not in done.stderr and "roach-init is" not in done.stderr


@pytest.mark.parametrize("version", ["2.17.0", "1.29.2", "garbage"])
def test_run_refuses_an_old_compose(tmp_path: Path, version: str) -> None:
    """Compose older than 2.20 stops run.sh before it builds anything."""
    done, calls = run(tmp_path, "run.sh", version=version)
    assert done.returncode == 1
    assert "2.20 or newer" in done.stderr
    assert "compose build" not in calls


@pytest.mark.parametrize("version", ["2.20.0", "v2.40.3", "5.6.0"])
def test_run_accepts_a_recent_compose(tmp_path: Path, version: str) -> None:
    """Compose 2.20 and later, with or without a leading v, is accepted."""
    done, _ = run(tmp_path, "run.sh", version=version)
    assert done.returncode == 0, done.stderr


def test_stop_keeps_the_data(tmp_path: Path) -> None:
    """./stop.sh removes the containers and keeps the volumes."""
    done, calls = run(tmp_path, "stop.sh")
    assert done.returncode == 0
    assert calls == ["compose down --remove-orphans"]


def test_stop_purge_deletes_the_volumes(tmp_path: Path) -> None:
    """./stop.sh --purge removes the volumes too."""
    done, calls = run(tmp_path, "stop.sh", "--purge")
    assert done.returncode == 0
    assert calls == ["compose down --volumes --remove-orphans"]


def test_stop_rejects_unknown_flags(tmp_path: Path) -> None:
    """An unknown flag changes nothing and exits 2."""
    done, calls = run(tmp_path, "stop.sh", "--volumes")
    assert done.returncode == 2
    assert calls == []
