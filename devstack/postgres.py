"""A PostgreSQL server of the dev stack's own, standing in for CockroachDB."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psycopg

from devstack.poll import Timeout, wait_until
from devstack.procs import StackError, log_tail, pid_alive, signal_pid


class Postgres:
    """A PostgreSQL server of its own under `root`, on 127.0.0.1:`port`, trust auth.

    Note: PostgreSQL refuses to run as root; as root the server runs as the `postgres`
    system user, which must be able to traverse `root` (see `scratch_dir`).
    """

    def __init__(self, root: Path, port: int) -> None:
        self.root = root.resolve()
        self.port = port
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._bin = _postgres_bin()

    def url(self, database: str) -> str:
        """The connection URL of `database` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid from its lock file, if it runs."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid, "postgres") else None

    @property
    def running(self) -> bool:
        """Whether the postmaster process is alive (not necessarily accepting connections)."""
        return self.pid is not None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (initdb on first use); returns once it accepts connections."""
        if not self.running:
            self._prepare()
            self._stale_lock_cleanup()
            self._as_owner(
                [
                    str(self._bin / "pg_ctl"),
                    "start",
                    "-W",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    f"-p {self.port}",
                ]
            )
        try:
            wait_until(self._accepts, timeout, "PostgreSQL to accept connections")
        except Timeout as exc:
            raise StackError(f"{exc}:\n{log_tail(self.log)}") from None

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown: disconnect clients, checkpoint, exit; waits for the exit."""
        if self.running:
            self._as_owner(
                [
                    str(self._bin / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(timeout)),
                ]
            )

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends, as a crash would; `start` recovers."""
        pid = self.pid
        if pid is None:
            return
        # pg_ctl puts the postmaster in a session of its own, so its pid is the group.
        signal_pid(pid, signal.SIGKILL, group=True)
        try:
            wait_until(lambda: not pid_alive(pid, "postgres"), 10.0, f"postmaster {pid} to die")
        except Timeout as exc:
            raise StackError(f"the postmaster survived SIGKILL: {exc}") from None
        self._stale_lock_cleanup()

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')

    def _accepts(self) -> bool:
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _prepare(self) -> None:
        owner = _pg_owner()
        self.root.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            if (
                subprocess.run(
                    ["runuser", "-u", owner.pw_name, "--", "test", "-w", str(self.root)],
                    check=False,
                ).returncode
                != 0
            ):
                raise StackError(
                    f"user {owner.pw_name} cannot reach {self.root}: PostgreSQL "
                    "runs as that user; use a directory it can traverse "
                    "(devstack.scratch_dir())"
                )
        if not (self.data / "PG_VERSION").exists():
            # --no-sync: a test cluster that a machine crash loses is simply made again.
            self._as_owner(
                [
                    str(self._bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
            (self.data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write("include = 'feedsvc.conf'\n")
        (self.data / "feedsvc.conf").write_text(
            "# Written by devstack on every start.\n"
            "listen_addresses = '127.0.0.1'\n"
            "unix_socket_directories = ''  # TCP only: /run/postgresql may not exist\n"
            "max_connections = 200  # several processes' pools plus tests\n"
            "shared_buffers = 128MB\n"
            "log_line_prefix = '%m [%p] '\n"
        )
        if owner is not None:
            for path in (self.data / "pg_hba.conf", self.data / "feedsvc.conf"):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def _stale_lock_cleanup(self) -> None:
        # A killed postmaster leaves its lock file; PostgreSQL would refuse to start if the
        # pid in it looked alive, which a never-reaped zombie does to kill(pid, 0).
        lock = self.data / "postmaster.pid"
        if lock.exists() and self.pid is None:
            lock.unlink()

    def _as_owner(self, argv: Sequence[str]) -> None:
        owner = _pg_owner()
        full = ["runuser", "-u", owner.pw_name, "--", *argv] if owner else list(argv)
        done = subprocess.run(full, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(
                f"{' '.join(argv)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n{log_tail(self.log)}"
            )


def _pg_owner() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as: `postgres` when we are root, else ourselves (None)."""
    return pwd.getpwnam("postgres") if os.geteuid() == 0 else None


def _postgres_bin() -> Path:
    """The newest installed PostgreSQL server's bin directory (Debian layout)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise StackError("no PostgreSQL server found: run scripts/bootstrap")
