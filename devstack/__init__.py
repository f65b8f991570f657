"""The native stack for development, tests and benchmarks: PostgreSQL, Kafka, feedsvc processes.

Imported by tests and benchmarks as a package and run by `scripts/local-stack` as
`python -m devstack up|down|status [--root DIR]`. `ExternalStack` is the
same thing without the servers: only the feedsvc processes, against a database and
Kafka that run elsewhere (the test container of `scripts/test-in-docker`).

Note: PID 1 on our machines does not reap orphans, so a process whose parent has gone
stays a zombie after it exits; liveness here reads `/proc/<pid>/stat` and counts a zombie
as dead, and a pid is only trusted while its command line still names what we started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
KAFKA_VERSION = "4.1.1"
KAFKA_LIBS = REPO / ".tools" / f"kafka-{KAFKA_VERSION}" / "libs"
KAFKA_LOG4J2 = REPO / "kafka" / "native" / "log4j2.properties"
DEFAULT_ROOT = REPO / ".local-stack"
STANDIN = "devstack.standin"
"""The changefeed stand-in's module, run as `python -m devstack.standin` from the repository."""


class StackError(RuntimeError):
    """A piece of the stack did not come up or go down; the message carries its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        _signal(pid, sig, group=group)
        if _poll(lambda: not pid_alive(pid, marker), wait):
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


def _signal(pid: int, sig: int, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _poll(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Call `check` until it is true or `timeout` seconds pass; backs off to 0.5 s."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _run_async(factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion in a fresh loop on its own thread.

    Note: a thread, so that callers inside a running event loop (async tests) can use it.
    """
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


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
        if not _poll(self._accepts, timeout):
            raise StackError(
                f"PostgreSQL did not accept connections in {timeout:.0f}s:\n" + log_tail(self.log)
            )

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
        _signal(pid, signal.SIGKILL, group=True)
        if not _poll(lambda: not pid_alive(pid, "postgres"), 10.0):
            raise StackError(f"postmaster {pid} survived SIGKILL")
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


class KafkaBroker:
    """A single-node KRaft Kafka (broker and controller in one JVM) under `root`.

    Note: the controller listens on a second port, chosen once and kept in
    `root/controller.port`, so a restart finds the same quorum and the same data.
    """

    def __init__(self, root: Path, port: int, controller_port: int | None = None) -> None:
        self.root = root.resolve()
        self.port = port
        self.data = self.root / "data"
        self.logs = self.root / "logs"
        self._pidfile = self.root / "kafka.pid"
        saved = self.root / "controller.port"
        if controller_port is None:
            controller_port = int(saved.read_text()) if saved.exists() else free_port()
        self.controller_port = controller_port
        self._proc: subprocess.Popen[bytes] | None = None
        # Names this broker's JVM among others on the machine (parallel test sessions).
        self._marker = f"-Dkafka.logs.dir={self.logs}"

    @property
    def bootstrap(self) -> str:
        """The address clients bootstrap from."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker JVM's pid, if it runs."""
        try:
            pid = int(self._pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid, self._marker) else None

    @property
    def running(self) -> bool:
        """Whether the broker JVM is alive (not necessarily serving yet)."""
        self._reap()
        return self.pid is not None

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker (format storage on first use); returns once it serves metadata."""
        if not self.running:
            if not (KAFKA_LIBS / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
                raise StackError(f"Kafka jars missing in {KAFKA_LIBS}: run scripts/bootstrap")
            self._prepare()
            self.logs.mkdir(parents=True, exist_ok=True)
            with (self.logs / "kafka.out").open("ab") as out:
                self._proc = subprocess.Popen(
                    [*self._java(), "kafka.Kafka", str(self.root / "server.properties")],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._pidfile.write_text(str(self._proc.pid))
        deadline = time.monotonic() + timeout
        if (
            not _poll(lambda: _port_open(self.port) or not self.running, timeout)
            or not self.running
        ):
            raise StackError(f"Kafka did not listen on {self.port}:\n{self.log_tail()}")
        while not self._serves_metadata():
            if not self.running or time.monotonic() >= deadline:
                raise StackError(f"Kafka did not serve metadata:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (a controlled shutdown that flushes the logs), SIGKILL after `timeout`."""
        pid = self.pid
        if pid is not None:
            stop_pid(pid, self._marker, timeout)
        self._reap(10.0)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; `start` recovers the logs."""
        pid = self.pid
        if pid is not None:
            stop_pid(pid, self._marker, 0.0)
        self._reap(10.0)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the broker's log and of its stdout (JVM errors land there)."""
        return (
            log_tail(self.logs / "server.log", lines)
            + "\n--- kafka.out ---\n"
            + log_tail(self.logs / "kafka.out", 10)
        )

    def _reap(self, timeout: float = 0.0) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return
            self._proc = None

    def _java(self) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise StackError("java not found: run scripts/bootstrap")
        return [
            java,
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            # Else log4j2's own hook stops logging first and the broker's last lines go to
            # stderr as "Unable to register Log4j shutdown hook ... Using SimpleLogger".
            "-Dlog4j2.shutdownHookEnabled=false",
            f"-Dkafka.logs.dir={self.logs}",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J2}",
            "-cp",
            f"{KAFKA_LIBS}/*",
        ]

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "controller.port").write_text(str(self.controller_port))
        props = self.root / "server.properties"
        props.write_text(self._properties())
        if (self.data / "meta.properties").exists():
            return
        # Kafka's own Uuid.randomUuid never starts with "-": StorageTool would read such
        # an id as an option and fail ("expected one argument").
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        self.logs.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                *self._java(),
                "kafka.tools.StorageTool",
                "format",
                "--config",
                str(props),
                "--cluster-id",
                cluster_id,
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(f"kafka storage format failed:\n{done.stdout}{done.stderr}")

    def _properties(self) -> str:
        # Keys: https://kafka.apache.org/41/configuration/broker-configs
        return "\n".join(
            [
                "# Written by devstack on every start.",
                "process.roles=broker,controller",
                "node.id=1",
                # A static voter set: StorageTool needs no --standalone, restarts need nothing.
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:"
                f"{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={self.data}",
                # Topics come from `feedsvc setup` only, as in compose.
                "auto.create.topics.enable=false",
                # One node: every internal topic has one replica.
                "offsets.topic.replication.factor=1",
                # One partition: the group coordinator is ready as soon as it is loaded.
                "offsets.topic.num.partitions=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # Tests start consumers one by one; no point waiting for more to join.
                "group.initial.rebalance.delay.ms=0",
                # As in compose: above messages.submitted's retention (7 days).
                "offsets.retention.minutes=20160",
                # After a crash the controller refuses the broker's new registration until the
                # old session expires (default 9 s); 4 s keeps crash drills short while a GC
                # pause still cannot fence a healthy broker (heartbeats every 0.5 s).
                "broker.heartbeat.interval.ms=500",
                "broker.session.timeout.ms=4000",
                "num.partitions=1",
                "default.replication.factor=1",
                "min.insync.replicas=1",
                "",
            ]
        )

    def _serves_metadata(self) -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        async def check() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                cluster = await admin.describe_cluster()
                return bool(cluster.get("brokers"))
            finally:
                await admin.close()

        try:
            return bool(_run_async(check))
        except Exception:
            return False


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

        if not _poll(ok, timeout) or not self.running:
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


# The api last: its readiness wait gives the others time to fail visibly first.
ROLES = ("writer", "changefeed", "api")


class Stack:
    """PostgreSQL, Kafka and the feedsvc processes under one root, for `local-stack`.

    Note: ports and pids live in `root/state.json`, so `up` is idempotent (running pieces
    are left alone) and `down`/`status` work from another shell.
    """

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        extra_env: Mapping[str, str] | None = None,
        *,
        roles: Sequence[str] = ROLES,
        log: Callable[[str], None] = print,
    ) -> None:
        self.root = root.resolve()
        self.extra_env = dict(extra_env or {})
        # The processes `up` starts; a test that runs its own stand-in leaves "changefeed" out.
        self.roles = tuple(r for r in ROLES if r in roles)
        self._log = log
        self._state_path = self.root / "state.json"
        self.state: dict[str, Any] = {}
        self._services: dict[str, Service] = {}
        with self._flock():
            self._refresh()

    @property
    def api_url(self) -> str:
        """The api's base URL."""
        return f"http://127.0.0.1:{self.state['ports']['api']}"

    @property
    def database_url(self) -> str:
        """The feedsvc database, as the processes and tests connect to it."""
        return self.postgres.url("feedsvc")

    @property
    def kafka_bootstrap(self) -> str:
        """Kafka, as the processes and tests bootstrap from it."""
        return self.kafka.bootstrap

    def env(self) -> dict[str, str]:
        """The environment of every feedsvc process: ours, minus stray FEED_*, plus the stack."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEED_")}
        env.update(
            {
                "FEED_DATABASE_URL": self.database_url,
                "FEED_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "FEED_HOST": "127.0.0.1",
                "FEED_PORT": str(self.state["ports"]["api"]),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def service(self, role: str) -> Service:
        """The process of `role` (writer, api, changefeed), adopting a pid from state.json."""
        # Kept, so that a process started here stays referenced (and is reaped) until down.
        svc = self._services.get(role)
        if svc is None or (svc.returncode is not None or svc.pid is None):
            if role == "changefeed":
                argv = [sys.executable, "-m", STANDIN]
            else:
                argv = [sys.executable, "-m", "feedsvc", role]
            svc = Service(
                role,
                argv,
                self.env(),
                self.root / "logs" / f"{role}.log",
                pid=self.state["pids"].get(role),
            )
            self._services[role] = svc
        return svc

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the root's lock: one `up` or `down` at a time (two shells raced `format`)."""
        with self._flock():
            # Another shell may have changed the pids while we waited.
            self._refresh()
            yield

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # PostgreSQL, running as `postgres`, must traverse it
        with (self.root / "lock").open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    PORTS: tuple[str, ...] = ("postgres", "kafka", "kafka_controller", "api")
    """The ports this stack listens on, chosen once and kept in state.json."""

    def _read_state(self) -> dict[str, int]:
        """Read state.json, choosing and saving any missing port; returns the ports."""
        try:
            self.state = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            self.state = {}
        self.state.setdefault("pids", {})
        ports: dict[str, int] = self.state.setdefault("ports", {})
        for name in self.PORTS:
            if name not in ports:
                ports[name] = free_port()
        self._save_state()
        return ports

    def _refresh(self) -> None:
        """Read state.json and bind the servers to its ports."""
        ports = self._read_state()
        # Rebuilt only when the ports changed: a broker started here keeps its process handle.
        pg = getattr(self, "postgres", None)
        if pg is None or pg.port != ports["postgres"]:
            self.postgres = Postgres(self.root / "postgres", ports["postgres"])
        kafka = getattr(self, "kafka", None)
        if kafka is None or (kafka.port, kafka.controller_port) != (
            ports["kafka"],
            ports["kafka_controller"],
        ):
            self.kafka = KafkaBroker(self.root / "kafka", ports["kafka"], ports["kafka_controller"])

    def up(self) -> None:
        """Start whatever is not running; returns when the api is ready."""
        with self.locked():
            self._up()

    def down(self) -> None:
        """Stop the processes, then Kafka, then PostgreSQL; data is kept."""
        with self.locked():
            self._down()

    def _up(self) -> None:
        began = time.monotonic()
        self._step("postgres", self.postgres.start)
        self.postgres.create_database("feedsvc")
        self._step("kafka", self.kafka.start)
        setup = Service(
            "setup",
            [sys.executable, "-m", "feedsvc", "setup"],
            self.env(),
            self.root / "logs" / "setup.log",
        )
        setup.start()
        status = setup.wait_exit(120.0)
        if status != 0:
            raise StackError(f"feedsvc setup exited {status}:\n{setup.log_tail()}")
        self._log("setup: done")
        self._start_roles()
        self._log(f"up in {time.monotonic() - began:.1f}s; logs in {self.root / 'logs'}")

    def _start_roles(self) -> None:
        """Start each role's process that is not running; the api last, waited for."""
        started = 0.0  # when the last process was started here
        for role in self.roles:
            svc = self.service(role)
            if svc.running:
                self._log(f"{role}: already running (pid {svc.pid})")
                continue
            svc.start()
            started = time.monotonic()
            self.state["pids"][role] = svc.pid
            self._save_state()
            if role == "api":
                svc.wait_http_ok(f"{self.api_url}/health/ready", 60.0)
            self._log(f"{role}: started (pid {svc.pid})")
        if started:
            # A process that dies on its first round (bad config, a bug) would otherwise
            # leave `up` reporting success when the api was already up and nothing waited.
            time.sleep(max(0.0, started + 1.5 - time.monotonic()))
        for role in self.roles:
            svc = self.service(role)
            if role in self.state["pids"] and not svc.running:
                raise StackError(f"{role} exited during start-up:\n{svc.log_tail()}")

    def _down(self) -> None:
        self._stop_roles(ROLES)  # all, whoever started them
        if self.kafka.running:
            self.kafka.stop()
            self._log("kafka: stopped")
        if self.postgres.running:
            self.postgres.stop()
            self._log("postgres: stopped")

    def _stop_roles(self, roles: Sequence[str]) -> None:
        """Stop the processes of `roles` that run, in reverse order."""
        for role in reversed(roles):
            svc = self.service(role)
            if svc.running:
                svc.terminate(30.0)
                self._log(f"{role}: stopped")
            self.state["pids"].pop(role, None)
            self._save_state()

    def status(self) -> dict[str, bool]:
        """Which pieces run."""
        result = {"postgres": self.postgres.running, "kafka": self.kafka.running}
        for role in self.roles:
            result[role] = self.service(role).running
        return result

    def _step(self, name: str, start: Callable[[], None]) -> None:
        began = time.monotonic()
        start()
        self._log(f"{name}: ready in {time.monotonic() - began:.1f}s")

    def _save_state(self) -> None:
        self._state_path.write_text(json.dumps(self.state, indent=2))


class ExternalStack(Stack):
    """The feedsvc processes only (writer, api), against a database and Kafka run elsewhere.

    For the test container of `scripts/test-in-docker`: CockroachDB and Kafka are compose
    services that `feedsvc setup` has already prepared (schema, topics, changefeed), and
    the real changefeed feeds `messages.committed`, so there is no server, no setup and
    no stand-in to start here. `up`, `down`, `service`, `env` and `status` work as on a
    `Stack`; there is no `postgres` or `kafka` attribute to stop or restart.
    """

    def __init__(
        self,
        root: Path,
        database_url: str,
        kafka_bootstrap: str,
        extra_env: Mapping[str, str] | None = None,
        *,
        log: Callable[[str], None] = print,
    ) -> None:
        if not database_url or not kafka_bootstrap:
            raise StackError("an external stack needs a database URL and a Kafka bootstrap")
        self._database_url = database_url
        self._kafka_bootstrap = kafka_bootstrap
        super().__init__(root, extra_env, roles=("writer", "api"), log=log)

    @property
    def database_url(self) -> str:
        """The external database, as given."""
        return self._database_url

    @property
    def kafka_bootstrap(self) -> str:
        """The external Kafka, as given."""
        return self._kafka_bootstrap

    def service(self, role: str) -> Service:
        """The process of `role` (writer or api); the changefeed is not a process here."""
        if role not in self.roles:
            raise StackError(
                f"{role}: not a process of an external stack ({', '.join(self.roles)})"
            )
        return super().service(role)

    PORTS = ("api",)

    def _refresh(self) -> None:
        """Read state.json; there are no servers of ours to bind."""
        self._read_state()

    def _up(self) -> None:
        began = time.monotonic()
        self._start_roles()
        self._log(f"up in {time.monotonic() - began:.1f}s; logs in {self.root / 'logs'}")

    def _down(self) -> None:
        self._stop_roles(self.roles)

    def status(self) -> dict[str, bool]:
        """Which processes run."""
        return {role: self.service(role).running for role in self.roles}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devstack up|down|status [--root DIR]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--root", type=Path, default=Path(os.environ.get("LOCAL_STACK_DIR") or DEFAULT_ROOT)
    )
    args = parser.parse_args(argv)
    stack = Stack(args.root)
    try:
        if args.command == "up":
            stack.up()
            print(f"FEED_URL={stack.api_url}")
        elif args.command == "down":
            stack.down()
        else:
            states = stack.status()
            for name, running in states.items():
                print(f"{name}: {'running' if running else 'stopped'}")
            print(f"FEED_URL={stack.api_url}")
            return 0 if all(states.values()) else 3
    except StackError as exc:
        print(f"local-stack {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0
