"""What the benchmarks share: progress lines, a fresh stack, a baseline server, conditions.

Used by `scripts/bench_ingest.py` and `scripts/bench_feed.py`; not a benchmark itself.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from local_stack import Service, Stack, StackError, free_port, scratch_dir

REPO = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    """A progress line on stderr (stdout carries only the JSON result)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """The machine's side of a result's `conditions`."""
    return {"cpu_count": os.cpu_count(), "python": platform.python_version()}


@contextmanager
def fresh_stack(
    prefix: str,
    *,
    roles: Sequence[str],
    extra_env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = say,
) -> Iterator[Stack]:
    """A native stack started in a scratch directory of its own; stopped and removed after."""
    root = scratch_dir(prefix)
    stack = Stack(root, extra_env, roles=roles, log=log)
    try:
        log(f"starting a fresh stack in {root}")
        stack.up()
        yield stack
    finally:
        try:
            stack.down()
        except StackError as exc:
            log(f"stack down failed: {exc}")
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def baseline_server(script: str, workdir: Path, *args: str) -> Iterator[tuple[Service, str]]:
    """`scripts/<script> PORT *args` (a bare Litestar app on uvicorn) until the block ends.

    Yields the service and its base URL once `GET /health` answers 200.
    """
    port = free_port()
    server = Service(
        "baseline",
        [sys.executable, str(REPO / "scripts" / script), str(port), *args],
        {**os.environ, "PYTHONPATH": str(REPO)},
        workdir / f"{Path(script).stem}.log",
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_http_ok(f"{url}/health", 30)
        yield server, url
    finally:
        server.terminate(10)
