"""The servers a scenario runs against: a fresh native stack, a baseline app, their metrics.

The stack is `devstack.Stack`, started in a scratch directory of its own and removed after.
The path decides what a scenario's `stack.api_url` is: `proxy` (the default), the front
door users hit, HAProxy in front of the api; `direct`, the api replica itself.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import psycopg

from bench.report import say
from devstack import Service, Stack, StackError, free_port, scratch_dir
from devstack.proxy import ONE_ADDRESS

REPO = Path(__file__).resolve().parents[1]


PATHS = ("proxy", "direct")
"""How the load reaches the api: through the front door (HAProxy), or straight to it."""


def describe(path: str) -> str:
    """The path, as results name it."""
    if path == "proxy":
        return "proxy: HAProxy (proxy/haproxy.cfg) in front of 1 api replica"
    return "direct: straight to the api replica, no proxy"


@contextmanager
def fresh_stack(
    *,
    roles: Sequence[str],
    extra_env: Mapping[str, str] | None = None,
    path: str = "proxy",
    log: Callable[[str], None] = say,
) -> Iterator[Stack]:
    """A native stack started in a scratch directory of its own; stopped and removed after."""
    if path not in PATHS:
        raise StackError(f"path {path!r}: expected one of {', '.join(PATHS)}")
    root = scratch_dir("feedsvc-bench-stack-")
    if path == "proxy":
        roles = (*roles, "proxy")
    # Every scenario's load comes from 127.0.0.1 and stands for many clients: the proxy's
    # per-address limits are lifted unless the scenario sets them (`overload` does).
    stack = Stack(root, {**ONE_ADDRESS, **(extra_env or {})}, roles=roles, log=log)
    try:
        log(f"starting a fresh stack in {root}; {describe(path)}")
        stack.up()
        yield stack
    finally:
        try:
            stack.down()
        except StackError as exc:
            log(f"stack down failed: {exc}")
        shutil.rmtree(root, ignore_errors=True)


ALL_ROLES = ("writer", "changefeed", "api")


class Stacks:
    """Where scenarios get their stack: a fresh one each (the default), or one shared.

    Note: shared (`scripts/bench all`), one stack with every role and the union of the
    scenarios' settings serves them in turn, saving a start (30 s on a loaded machine) per
    scenario; scenarios count rows relative to what they find, and `faults`, which breaks
    the stack, runs last.
    """

    def __init__(self, *, shared_env: Mapping[str, str] | None = None, path: str = "proxy") -> None:
        self.shared = shared_env is not None
        self.path = path
        self._env = dict(shared_env or {})
        self._stack: Stack | None = None
        self._open = ExitStack()  # the shared stack's fresh_stack, left on `close`

    @contextmanager
    def get(
        self, roles: Sequence[str], extra_env: Mapping[str, str] | None = None
    ) -> Iterator[Stack]:
        """A running stack with at least `roles` and `extra_env`."""
        if not self.shared:
            with fresh_stack(roles=roles, extra_env=extra_env, path=self.path) as stack:
                yield stack
            return
        if self._stack is None:
            say("one stack for every scenario")
            self._stack = self._open.enter_context(
                fresh_stack(roles=ALL_ROLES, extra_env=self._env, path=self.path)
            )
        else:
            if not all(self._stack.status().values()):
                self._stack.up()  # restarts whatever a scenario left down
            # A fresh api for each scenario: memory and CPU figures start from its own.
            self._stack.service("api").terminate(30.0)
            self._stack.start_role("api", 90.0)
        yield self._stack

    def close(self) -> None:
        """Stop and remove the shared stack, if one was started."""
        self._open.close()


@contextmanager
def baseline_server(module: str, workdir: Path, *args: str) -> Iterator[tuple[Service, str]]:
    """`python -m bench.<module> PORT *args` (a bare Litestar app) until the block ends.

    Yields the service and its base URL once `GET /health` answers 200.
    """
    port = free_port()
    server = Service(
        "baseline",
        [sys.executable, "-m", f"bench.{module}", str(port), *args],
        {**os.environ, "PYTHONPATH": str(REPO)},
        workdir / f"{module}.log",
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_http_ok(f"{url}/health", 30)
        yield server, url
    finally:
        server.terminate(10)


def pid_of(stack: Stack, role: str) -> int:
    """The pid of `role`'s process, which must run."""
    pid = stack.service(role).pid
    if pid is None:
        raise StackError(f"{role} does not run")
    return pid


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metrics(url: str) -> dict[str, float]:
    """The api's `/metrics` samples, name (with labels) -> value; empty when it is down."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            try:
                found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
            except ValueError:
                continue
    return found


def stored_ids(database_url: str) -> list[str]:
    """Every message id in the database (a list, so duplicates would show)."""
    with psycopg.connect(database_url) as conn:
        return [r[0] for r in conn.execute("SELECT id::text FROM messages").fetchall()]


def stored_count(database_url: str) -> int:
    """How many messages the database holds; -1 while it does not answer."""
    try:
        with psycopg.connect(database_url, connect_timeout=3) as conn:
            row = conn.execute("SELECT count(*) FROM messages").fetchone()
    except psycopg.Error:
        return -1
    return int(row[0]) if row else 0
