"""The api's worker supervisor: restarts a dead worker, stops on a crash loop or a signal.

Each test runs the supervisor in a process of its own (it installs signal handlers and
forks), with workers that only write their pid to a directory and sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devstack.poll import wait_until
from devstack.procs import pid_alive
from feedsvc.serving.sockets import listener, reserve_port
from feedsvc.workers import worker_count

# `work` writes <dir>/<pid> and runs MODE: "sleep" until SIGTERM (then exits 0), "crash"
# at once (exit 3).
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from feedsvc.workers import Supervisor

    folder, mode = Path(sys.argv[1]), sys.argv[2]

    def work(slot: int) -> int:
        # The handler before the pid file: a test that signals a worker it has seen start
        # must not find it still on SIGTERM's default action (a loaded machine did).
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        (folder / str(os.getpid())).write_text(str(slot))
        if mode == "crash":
            return 3
        while not stop:
            time.sleep(0.05)
        (folder / f"{os.getpid()}.stopped").write_text("")
        return 0

    sys.exit(Supervisor(2, work, max_deaths=3, window_s=30, restart_delay_s=0.1).run())
    """
)


def _started(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@contextmanager
def supervisor(tmp_path: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    # Its log lines (warnings and up, on stderr by logging's last resort) are the record.
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path), mode], stderr=subprocess.PIPE, text=True
    )
    with proc:  # closes the pipe and waits
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def test_sigterm_stops_every_worker_gracefully(tmp_path: Path) -> None:
    """SIGTERM to the supervisor reaches each worker, which finishes; the supervisor exits 0."""
    with supervisor(tmp_path, "sleep") as proc:
        wait_until(lambda: len(_started(tmp_path)) == 2, 30, "two workers")
        workers = _started(tmp_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for pid in workers:
            assert (tmp_path / f"{pid}.stopped").exists()
            assert not pid_alive(pid)


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    """A worker that dies (SIGKILL) is forked again in its slot; the others keep running."""
    with supervisor(tmp_path, "sleep") as proc:
        wait_until(lambda: len(_started(tmp_path)) == 2, 30, "two workers")
        first, second = _started(tmp_path)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(_started(tmp_path)) == 3, 30, "a replacement worker")
        replacement = next(p for p in _started(tmp_path) if p not in (first, second))
        assert (tmp_path / str(replacement)).read_text() == (tmp_path / str(first)).read_text()
        assert pid_alive(second) and pid_alive(replacement) and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_crash_loop_brings_the_role_down(tmp_path: Path) -> None:
    """Workers that keep dying stop the supervisor with exit code 1 instead of looping."""
    with supervisor(tmp_path, "crash") as proc:
        _, errors = proc.communicate(timeout=60)
        assert proc.returncode == 1
        # Two, then one fork after each of the 3 deaths tolerated; the 4th stops it all.
        # (The 5th worker may be stopped before it writes its pid: count deaths, not pids.)
        assert errors.count("api worker died") == 4, errors
        assert "api workers keep dying" in errors
        assert len(_started(tmp_path)) >= 4


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the supervisor leaves no worker running on its own (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    with supervisor(tmp_path, "sleep") as proc:
        wait_until(lambda: len(_started(tmp_path)) == 2, 30, "two workers")
        workers = _started(tmp_path)
        proc.kill()
        proc.wait(10)
        wait_until(lambda: not any(pid_alive(p) for p in workers), 30, "the workers to stop")
        for pid in workers:
            assert (tmp_path / f"{pid}.stopped").exists()  # SIGTERM: they finished


def test_reuse_port_listeners_share_one_port() -> None:
    """Workers' listeners bind one port beside the reservation, which takes no connection."""
    reserved = reserve_port("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    first = listener("127.0.0.1", port, 0, reuse_port=True)
    second = listener("127.0.0.1", port, 0, reuse_port=True)
    try:
        assert first.getsockname()[1] == second.getsockname()[1] == port
        with pytest.raises(OSError):  # another program cannot take the port meanwhile
            socket.create_server(("127.0.0.1", port))
    finally:
        for sock in (first, second, reserved):
            sock.close()


def test_worker_count_defaults_to_the_cores() -> None:
    """0 means one worker per core this process may run on; a number is taken as it is."""
    assert worker_count(0) == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3
