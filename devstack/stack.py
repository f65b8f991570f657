"""The whole native stack under one root: PostgreSQL, Kafka, the feedsvc processes, the proxy.

The api runs as `replicas` processes (each with its FEED_API_WORKERS) on ports of their
own, behind HAProxy (`devstack/proxy.py`): `api_url` is the proxy's, as users reach it;
`replica_url` reaches one replica directly. `Stack` is what `scripts/local-stack`, the
tests and the benchmarks start; `ExternalStack` is the same thing without the servers:
only the feedsvc processes, against a database and Kafka that run elsewhere (the test
container of `scripts/test-in-docker`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from devstack.kafka import KafkaBroker
from devstack.poll import wait_until
from devstack.postgres import Postgres
from devstack.procs import REPO, Service, StackError, free_port, listeners
from devstack.proxy import Proxy
from feedsvc.workers import worker_count

DEFAULT_ROOT = REPO / ".local-stack"
"""Where `scripts/local-stack` keeps its state, data and logs unless LOCAL_STACK_DIR says."""
STANDIN = "devstack.standin"
"""The changefeed stand-in's module, run as `python -m devstack.standin` from the repository."""

# The api last: its readiness wait gives the others time to fail visibly first; then the
# proxy in front of it.
ROLES = ("writer", "changefeed", "api", "proxy")


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
        replicas: int = 1,
        log: Callable[[str], None] = print,
    ) -> None:
        if replicas < 1:
            raise StackError(f"replicas={replicas}: the api needs one replica at least")
        self.root = root.resolve()
        self.extra_env = dict(extra_env or {})
        # The processes `up` starts; a test that runs its own stand-in leaves "changefeed" out.
        self.roles = tuple(r for r in ROLES if r in roles)
        # The api's processes: "api" (the first, as before there were replicas), "api2", ...
        self.replicas = ("api", *(f"api{i}" for i in range(2, replicas + 1)))
        self._log = log
        self._state_path = self.root / "state.json"
        self.state: dict[str, Any] = {}
        self._services: dict[str, Service] = {}
        with self._flock():
            self._refresh()

    @property
    def api_url(self) -> str:
        """The api's base URL as users reach it: the proxy's, or the one replica's without one."""
        if "proxy" not in self.roles:
            return self.replica_url()
        return f"http://127.0.0.1:{self.state['ports']['proxy']}"

    def replica_url(self, name: str = "api") -> str:
        """One api replica's base URL, past the proxy (its own /metrics, the direct path)."""
        return f"http://127.0.0.1:{self.state['ports'][name]}"

    @property
    def proxy(self) -> Proxy:
        """The front door in front of the replicas (HAProxy)."""
        proxy = getattr(self, "_proxy", None)
        pid = self.state["pids"].get("proxy")
        if proxy is None or proxy.port != self.state["ports"]["proxy"] or not proxy.service.running:
            ports = {name: self.state["ports"][name] for name in self.replicas}
            proxy = Proxy(
                self.root / "proxy", self.state["ports"]["proxy"], ports, self.env(), pid=pid
            )
            self._proxy = proxy
        return proxy

    def processes(self) -> tuple[str, ...]:
        """Every process `up` starts, in order: the roles, with the api's replicas in its place."""
        return tuple(p for r in self.roles for p in (self.replicas if r == "api" else (r,)))

    @property
    def writer_url(self) -> str:
        """The writer's `/metrics` and `/health/*` base URL."""
        return f"http://127.0.0.1:{self.state['ports']['writer']}"

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
                "FEED_WRITER_METRICS_PORT": str(self.state["ports"]["writer"]),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def service(self, role: str) -> Service:
        """The process of `role` (writer, changefeed, proxy, or a replica: api, api2, ...),
        adopting a pid from state.json."""
        if role == "proxy":
            return self.proxy.service
        # Kept, so that a process started here stays referenced (and is reaped) until down.
        svc = self._services.get(role)
        if svc is None or (svc.returncode is not None or svc.pid is None):
            env = self.env()
            if role == "changefeed":
                argv = [sys.executable, "-m", STANDIN]
            elif role.startswith("api"):
                argv = [sys.executable, "-m", "feedsvc", "api"]
                env["FEED_PORT"] = str(self.state["ports"][role])
            else:
                argv = [sys.executable, "-m", "feedsvc", role]
            svc = Service(
                role,
                argv,
                env,
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

    PORTS: tuple[str, ...] = ("postgres", "kafka", "kafka_controller", "proxy", "writer")
    """The ports this stack listens on besides the replicas', chosen once, kept in state.json."""

    def _read_state(self) -> dict[str, int]:
        """Read state.json, choosing and saving any missing port; returns the ports."""
        try:
            self.state = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            self.state = {}
        self.state.setdefault("pids", {})
        ports: dict[str, int] = self.state.setdefault("ports", {})
        for name in (*self.PORTS, *self.replicas):
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
        for role in self.processes():
            svc = self.service(role)
            if svc.running:
                self._log(f"{role}: already running (pid {svc.pid})")
                continue
            started = time.monotonic()
            svc = self.start_role(role)
            self._log(f"{role}: started (pid {svc.pid})")
        if started:
            # A process that dies on its first round (bad config, a bug) would otherwise
            # leave `up` reporting success when the api was already up and nothing waited.
            time.sleep(max(0.0, started + 1.5 - time.monotonic()))
        for role in self.processes():
            svc = self.service(role)
            if role in self.state["pids"] and not svc.running:
                raise StackError(f"{role} exited during start-up:\n{svc.log_tail()}")

    def start_role(self, role: str, ready_within: float = 60.0) -> Service:
        """Start `role`'s process and record its pid; for a replica or the proxy, return once
        it is ready, and a replica once the proxy (if running) routes to it.

        Note: also how a drill or a benchmark brings back a process it killed.
        """
        if role == "proxy":
            self.proxy.start()
        svc = self.service(role)
        svc.start()
        self.state["pids"][role] = svc.pid
        self._save_state()
        began = time.monotonic()

        def left() -> float:
            return max(1.0, ready_within - (time.monotonic() - began))

        if role in self.replicas:
            svc.wait_http_ok(f"{self.replica_url(role)}/health/ready", ready_within)
            # Ready is one worker's answer: wait for every worker to listen, so that load
            # started now is spread over all of them.
            workers = worker_count(int(self.env().get("FEED_API_WORKERS") or 0))
            port = self.state["ports"][role]
            wait_until(
                lambda: listeners(port) >= workers or not svc.running,
                left(),
                f"{workers} api workers listening on port {port}",
            )
            if "proxy" in self.roles and self.proxy.service.running:
                wait_until(
                    lambda: self.proxy.server_states().get(role) == "UP",
                    left(),
                    f"the proxy to route to {role}",
                )
        elif role == "proxy":
            svc.wait_http_ok(f"{self.api_url}/health/ready", ready_within)
        return svc

    def _down(self) -> None:
        # All, whoever started them, and every replica an earlier `up` recorded.
        recorded = tuple(sorted(p for p in self.state["pids"] if p.startswith("api")))
        self._stop_roles(("writer", "changefeed", *recorded, "proxy"))
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
        for role in self.processes():
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
        # No proxy: the test container of scripts/test-in-docker has no haproxy.
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

    PORTS = ("writer",)

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
        return {role: self.service(role).running for role in self.processes()}
