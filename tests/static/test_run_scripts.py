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
if [ -n "$FAKE_NO_COMPOSE" ] && [ "$1" = compose ]; then
  # What docker says when the Compose plugin is not installed.
  for arg in "$@"; do
    case "$arg" in --*) echo "unknown flag: $arg" >&2; exit 125 ;; esac
  done
  echo "docker: 'compose' is not a docker command." >&2; exit 1
fi
case "$*" in
  info) exit 0 ;;
  "version --format {{.Server.Version}}") echo "${FAKE_ENGINE:-27.3.1}" ;;
  "compose version --short") echo "$FAKE_COMPOSE_VERSION" ;;
  "compose config --images")
    printf '%s\n' cockroachdb/cockroach:v25.4.14 apache/kafka:4.1.1 feedsvc-api ;;
  image\ inspect*)
    case " $FAKE_MISSING_IMAGES " in *" ${*: -1} "*) exit 1 ;; esac ;;
  "compose pull --ignore-buildable") echo "pulling with progress" ;;
  "compose build") echo "building with progress" ;;
  compose\ up*)
    if [ -n "$FAKE_UP_ERROR" ]; then echo "$FAKE_UP_ERROR" >&2; exit 1; fi
    echo "Container feedsvc-api-1  Running" ;;
  "compose ps --all --quiet") printf '%s\n' c1 c2 c3 c4 c5 c6 ;;
  inspect\ --format*)
    [ "${*: -6}" = "c1 c2 c3 c4 c5 c6" ] || exit 4
    printf '%s\n' 'roach1|running|healthy|0' 'roach-init|exited||0' 'kafka|running|healthy|0' \
      'setup|exited||1' 'writer|restarting|unhealthy|1' 'writer|restarting|unhealthy|1' ;;
  "compose config --services")
    printf '%s\n' roach1 roach-init kafka setup writer api ;;
  compose\ exec\ -T\ roach[123]\ cockroach\ sql\ --insecure\ --format=tsv\ -e*)
    [ -z "$FAKE_SQL_DOWN" ] || exit 1
    case " $FAKE_DOWN_NODES " in *" $4 "*) exit 1 ;; esac
    case "$*" in
      *"SHOW CLUSTER SETTING enterprise.license"*)
        printf 'enterprise.license\n%s\n' "$FAKE_LICENSE" ;;
      *"FROM feedsvc.cluster_init"*)
        printf 'timestamp\n'; [ -z "$FAKE_INIT_UNKNOWN" ] && echo "2026-12-05 07:40:54" ;;
      *) exit 5 ;;
    esac ;;
  compose\ logs*) echo "last lines of ${*: -1}" ;;
  "compose port haproxy 8000") echo 127.0.0.1:18000 ;;
  compose\ port*) echo 127.0.0.1:1 ;;
  compose\ down*) ;;
  *) echo "fake docker: unexpected call: $*" >&2; exit 3 ;;
esac
"""


def run(
    tmp_path: Path,
    script: str,
    *args: str,
    version: str = "2.29.1",
    up_error: str = "",
    env_extra: dict[str, str] | None = None,
    **knobs: str,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a script with the fake docker first on PATH; returns its result and the calls.

    `knobs` sets the fake's other knobs: no_compose, missing_images, license, sql_down,
    down_nodes, init_unknown (each FAKE_<NAME>).
    """
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
        **{f"FAKE_{name.upper()}": value for name, value in knobs.items()},
        **(env_extra or {}),
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
    """A healthy start builds, waits with a timeout, and prints the published addresses,
    the feed's being the front door's (haproxy)."""
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
    assert calls[-1] == "compose down --remove-orphans"
    assert not any("--volumes" in call for call in calls)


def test_stop_purge_deletes_the_volumes(tmp_path: Path) -> None:
    """./stop.sh --purge removes the volumes too."""
    done, calls = run(tmp_path, "stop.sh", "--purge")
    assert done.returncode == 0
    assert calls[-1] == "compose down --volumes --remove-orphans"


def test_stop_rejects_unknown_flags(tmp_path: Path) -> None:
    """An unknown flag changes nothing and exits 2."""
    done, calls = run(tmp_path, "stop.sh", "--volumes")
    assert done.returncode == 2
    assert calls == []


MISSING_PLUGIN = "Docker Compose v2 (the 'docker compose' plugin) is missing"


@pytest.mark.parametrize("script", ["run.sh", "stop.sh"])
def test_without_the_compose_plugin_both_scripts_say_so(tmp_path: Path, script: str) -> None:
    """A docker without `compose` gets the same message from run.sh and stop.sh, exit 1."""
    done, calls = run(tmp_path, script, no_compose="1")
    assert done.returncode == 1
    install = "https://docs.docker.com/compose/install/"
    assert done.stderr.strip() == f"{script}: {MISSING_PLUGIN}: {install}"
    assert "unknown flag" not in done.stderr
    started = ("compose down", "compose up", "compose build")
    assert not any(call.startswith(started) for call in calls)


@pytest.mark.parametrize("script", ["run.sh", "stop.sh"])
def test_both_scripts_refuse_an_old_compose(tmp_path: Path, script: str) -> None:
    """The version check is shared: stop.sh refuses Compose 2.17 as run.sh does."""
    done, calls = run(tmp_path, script, version="2.17.0")
    assert done.returncode == 1
    assert "2.20 or newer" in done.stderr
    assert not any(call.startswith("compose down") for call in calls)


def test_both_scripts_share_one_preflight() -> None:
    """run.sh and stop.sh source the same helper instead of each carrying its own checks."""
    for script in ("run.sh", "stop.sh"):
        text = (ROOT / script).read_text()
        assert ". scripts/lib/docker-preflight.sh" in text, script
        assert f"docker_preflight {script}" in text, script
        assert "compose version" not in text, script


def test_first_run_shows_pull_and_build_progress(tmp_path: Path) -> None:
    """With an image missing, pull and build run with their output on the terminal."""
    done, calls = run(tmp_path, "run.sh", missing_images="apache/kafka:4.1.1")
    assert done.returncode == 0, done.stderr
    assert calls.index("compose pull --ignore-buildable") < calls.index("compose build")
    assert "pulling with progress" in done.stdout
    assert "building with progress" in done.stdout


def test_later_runs_build_quietly(tmp_path: Path) -> None:
    """With every image there, nothing is pulled and the build output stays in the log."""
    done, calls = run(tmp_path, "run.sh")
    assert done.returncode == 0, done.stderr
    assert not any(call.startswith("compose pull") for call in calls)
    assert "compose build" in calls
    assert "building with progress" not in done.stdout


def test_run_keeps_what_compose_said_in_feedsvc_run_log(tmp_path: Path) -> None:
    """FEEDSVC_RUN_LOG keeps `up`'s output, which the workflow's re-run step greps."""
    log = tmp_path / "compose.log"
    done, _ = run(tmp_path, "run.sh", env_extra={"FEEDSVC_RUN_LOG": str(log)})
    assert done.returncode == 0, done.stderr
    assert "Container feedsvc-api-1  Running" in log.read_text()


def test_run_prints_when_the_licence_grace_period_ends(tmp_path: Path) -> None:
    """Without a licence, run.sh names the date throttling starts (init + 7 days)."""
    done, _ = run(tmp_path, "run.sh", license="")
    assert done.returncode == 0, done.stderr
    assert "grace period ends 2026-12-05 07:40:54 UTC" in done.stdout
    assert "5 concurrent transactions" in done.stdout


def test_run_says_nothing_about_the_licence_when_one_is_set(tmp_path: Path) -> None:
    """With `enterprise.license` set there is no notice."""
    done, _ = run(tmp_path, "run.sh", license="crl-0-abc")
    assert done.returncode == 0, done.stderr
    assert "licence" not in done.stdout.lower()


def test_licence_notice_without_a_recorded_init_time(tmp_path: Path) -> None:
    """A cluster whose init time was not recorded still gets the notice, without a date."""
    done, _ = run(tmp_path, "run.sh", license="", init_unknown="1")
    assert done.returncode == 0, done.stderr
    assert "7 days after this cluster was initialized" in done.stdout


def test_licence_notice_asks_another_node_when_roach1_is_down(tmp_path: Path) -> None:
    """With roach1 stopped, run.sh's SQL goes through roach2 and the notice keeps its date."""
    done, calls = run(tmp_path, "run.sh", license="", down_nodes="roach1")
    assert done.returncode == 0, done.stderr
    assert "grace period ends 2026-12-05 07:40:54 UTC" in done.stdout
    assert any(call.startswith("compose exec -T roach2 cockroach sql") for call in calls)


def test_licence_check_failing_does_not_fail_run(tmp_path: Path) -> None:
    """The notice is advice: a SQL shell that cannot answer leaves run.sh's result alone."""
    done, _ = run(tmp_path, "run.sh", sql_down="1")
    assert done.returncode == 0, done.stderr
    assert "feedsvc is up" in done.stdout


@pytest.mark.parametrize("engine", ["24.0.9", "20.10.24"])
def test_run_refuses_an_engine_older_than_25(tmp_path: Path, engine: str) -> None:
    """Health checks use start_interval: an older engine is named before anything starts."""
    done, calls = run(tmp_path, "run.sh", engine=engine)
    assert done.returncode == 1
    assert f"Docker Engine {engine} is too old; 25 or newer is needed" in done.stderr
    assert not any(call.startswith(("compose build", "compose up")) for call in calls)


@pytest.mark.parametrize("engine", ["25.0.0", "28.5.1", "dev", ""])
def test_run_accepts_engine_25_and_unknown_engines(tmp_path: Path, engine: str) -> None:
    """Engine 25 and later start; an engine whose version cannot be read is let through."""
    done, _ = run(tmp_path, "run.sh", engine=engine)
    assert done.returncode == 0, done.stderr


def test_stop_does_not_need_a_recent_engine(tmp_path: Path) -> None:
    """Stopping works on any engine: ./stop.sh makes no engine version check."""
    done, calls = run(tmp_path, "stop.sh", engine="24.0.9")
    assert done.returncode == 0, done.stderr
    assert calls[-1] == "compose down --remove-orphans"
