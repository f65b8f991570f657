"""Child processes of the dev stack: starting, adopting, stopping them, and their logs.

Note: PID 1 on our machines does not reap orphans, so a process whose parent has gone
stays a zombie after it exits; liveness here reads `/proc/<pid>/stat` and counts a zombie
as dead, and a pid is only trusted while its command line still names what we started.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from devstack.poll import Timeout, wait_until

REPO = Path(__file__).resolve().parents[1]
"""The repository: the working directory of every process started here."""


class StackError(RuntimeError):
    """A piece of the stack did not come up or go down; the message carries its log tail."""


_LOWEST_PORT = 10_000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to right now, below the ephemeral range.

    Note: not `bind(("127.0.0.1", 0))`: that returns an ephemeral port, which any outgoing
    connection (a Kafka client, an HTTP client) may take as its source port before the
    server we meant it for binds it; on a busy machine that made Kafka or the api fail to
    start with "Address already in use". Ports below the ephemeral range are only ever
    taken by listeners, and a port handed out once is not handed out again by this process.
    """
    high = _ephemeral_low()
    low = min(_LOWEST_PORT, high // 2)
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise StackError(f"no free port in {low}..{high - 1}")


def scratch_dir(prefix: str = "feedsvc-stack-") -> Path:
    """A fresh temporary directory that the `postgres` user can traverse.

    Note: pytest's `tmp_path` is mode 0700 under root, so PostgreSQL (which must run as
    `postgres` when we are root) cannot reach a data directory inside it; use this instead.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def pid_alive(pid: int, marker: str = "") -> bool:
    """Whether `pid` runs (a zombie counts as dead) and its command line contains `marker`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    state = stat[stat.rindex(")") + 2 :].split(" ", 1)[0]
    if state in ("Z", "X"):
        return False
    # A process that is exiting has already dropped its command line: still alive.
    return not cmdline or marker in cmdline


def stop_pid(pid: int, marker: str, timeout: float, *, group: bool = True) -> None:
    """SIGTERM `pid` (its process group when `group`), then SIGKILL after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if not pid_alive(pid, marker):
            return
        signal_pid(pid, sig, group=group)
        with contextlib.suppress(Timeout):
            wait_until(lambda: not pid_alive(pid, marker), wait, f"pid {pid} to exit")
            return
    raise StackError(f"pid {pid} ({marker}) survived SIGKILL")


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, or a note that it does not exist."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def signal_pid(pid: int, sig: int, *, group: bool) -> None:
    """Send `sig` to `pid` (its process group when `group`); a process already gone is fine."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def listeners(port: int) -> int:
    """How many sockets listen on TCP `port` (any address, IPv4 or IPv6), from /proc/net.

    Note: an api worker binds its listening socket only once it is ready to serve
    (`feedsvc.workers`), so this counts the ready workers; the supervisor's reservation
    of the port is bound but not listening, and is not counted.
    """
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                # local is HEXADDR:HEXPORT; state 0A is TCP_LISTEN (include/net/tcp_states.h).
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


class Service:
    """A child process in its own process group, output appended to `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        cwd: Path = REPO,
        pid: int | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        # A pid adopted from an earlier shell (state.json); trusted while its argv matches.
        self._adopted = pid

    @property
    def marker(self) -> str:
        """What the process's command line must contain for its pid to be trusted."""
        return " ".join(self.argv[1:]) or self.argv[0]

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        if self._adopted is not None and pid_alive(self._adopted, self.marker):
            return self._adopted
        return None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.pid is not None

    @property
    def returncode(self) -> int | None:
        """The exit status once a process started here has exited, else None."""
        return None if self._proc is None else self._proc.poll()

    def start(self) -> None:
        """Start the process unless it already runs."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._adopted = None

    def wait_exit(self, timeout: float) -> int:
        """Wait for a process started here to exit; its status (raises on timeout)."""
        if self._proc is None:
            raise StackError(f"{self.name} was not started here")
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise StackError(
                f"{self.name} still runs after {timeout:.0f}s:\n" + self.log_tail()
            ) from None

    def wait_http_ok(self, url: str, timeout: float = 30.0) -> None:
        """Poll `url` until it answers 200; raises with the log tail if the process exits."""
        last = "no answer"

        def ok() -> bool:
            nonlocal last
            if not self.running:
                return True
            try:
                status = httpx.get(url, timeout=2.0).status_code
            except httpx.HTTPError as exc:
                last = repr(exc)
                return False
            last = f"HTTP {status}"
            return status == 200

        try:
            ready = wait_until(ok, timeout, f"{url} to answer 200") and self.running
        except Timeout:
            ready = False
        if not ready:
            state = "exited" if not self.running else f"last: {last}"
            raise StackError(
                f"{self.name}: {url} not ready in {timeout:.0f}s ({state}, "
                f"returncode {self.returncode}):\n{self.log_tail()}"
            )

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL after `timeout`; the exit status if known."""
        pid = self.pid
        if pid is not None:
            stop_pid(pid, self.marker, timeout)
        self._reap()
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the process group at once, as a crash would."""
        pid = self.pid
        if pid is not None:
            stop_pid(pid, self.marker, 0.0)
        self._reap()

    def _reap(self) -> None:
        # stop_pid saw it die; collect the exit status so no zombie or warning is left.
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10.0)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the process's output."""
        return log_tail(self.log_path, lines)
