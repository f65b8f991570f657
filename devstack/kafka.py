"""A single-node Kafka broker of the dev stack's own (KRaft, from the jars in `.tools/`)."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.poll import Timeout, wait_until
from devstack.procs import (
    REPO,
    StackError,
    free_port,
    log_tail,
    pid_alive,
    port_open,
    stop_pid,
)

KAFKA_VERSION = "4.1.1"
KAFKA_LIBS = REPO / ".tools" / f"kafka-{KAFKA_VERSION}" / "libs"
KAFKA_LOG4J2 = REPO / "kafka" / "native" / "log4j2.properties"


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
        try:
            listening = f"Kafka to listen on {self.port}"
            wait_until(lambda: not self.running or port_open(self.port), timeout, listening)
            wait_until(
                lambda: not self.running or self._serves_metadata(),
                max(0.0, deadline - time.monotonic()),
                "Kafka to serve metadata",
                interval=0.2,
                max_interval=0.2,
            )
        except Timeout as exc:
            raise StackError(f"{exc}:\n{self.log_tail()}") from None
        if not self.running:
            raise StackError(f"Kafka exited during start-up:\n{self.log_tail()}")

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
