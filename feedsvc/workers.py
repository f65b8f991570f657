"""The api's worker processes: several whole apis on one port, kept running by their parent.

Each worker is forked before any event loop or thread exists and runs the api's whole
composition root (its own Kafka producer, relay, fan-out and database pool), so whatever
holds for two api replicas holds for two workers. Each binds its own listening socket to
the port with SO_REUSEPORT once it is ready to serve, and the kernel spreads new
connections evenly over the listening workers (socket(7), SO_REUSEPORT:
https://man7.org/linux/man-pages/man7/socket.7.html). uvicorn's own `workers` option is
not used: it imports the app by name in each child, while our app is built from resources
the process opened first (https://www.uvicorn.org/deployment/#built-in).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("feedsvc")

PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when its parent dies
(https://man7.org/linux/man-pages/man2/prctl.2.html)."""


def worker_count(configured: int) -> int:
    """How many workers to run: `configured`, or one per core this process may use."""
    # sched_getaffinity, unlike cpu_count, honours a container's or taskset's cpuset.
    return configured or max(1, len(os.sched_getaffinity(0)))


class Supervisor:
    """Forks `count` workers (`work(slot)` returns a worker's exit code) and keeps them running.

    Note: a worker that dies is logged at error level and forked again after a second;
    more than `max_deaths` deaths within `window_s` (a crash loop: a bug, or a resource
    that is gone for good) stop every worker and the supervisor exits 1, so the role
    goes down visibly and its own supervisor (compose's `restart`) takes over. SIGTERM
    or SIGINT sends SIGTERM to every worker (each finishes what it has in hand within
    FEED_SHUTDOWN_GRACE_S) and returns once all have exited. Workers get SIGTERM when
    the supervisor itself dies, even by SIGKILL (PR_SET_PDEATHSIG), so none is left
    serving on its own.
    """

    def __init__(
        self,
        count: int,
        work: Callable[[int], int],
        *,
        on_death: Callable[[int], None] | None = None,
        max_deaths: int = 5,
        window_s: float = 60.0,
        restart_delay_s: float = 1.0,
    ) -> None:
        self.count = count
        self.work = work
        self.on_death = on_death
        self.max_deaths = max_deaths
        self.window_s = window_s
        self.restart_delay_s = restart_delay_s
        self.slots: dict[int, int] = {}
        """pid -> slot of every worker that runs."""
        self._stopping = False
        self._failed = False
        self._deaths: collections.deque[float] = collections.deque()

    def run(self) -> int:
        """Run until signalled or a crash loop; the supervisor's exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for slot in range(self.count):
            self._fork(slot)
        while self.slots:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid not in self.slots:
                continue
            slot = self.slots.pop(pid)
            if self.on_death is not None:
                self.on_death(pid)
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                if code != 0:
                    self._failed = True
                    log.error("api worker exited badly", extra={"pid": pid, "exit_code": code})
                continue
            self._died(pid, slot, code)
        return 1 if self._failed else 0

    def _died(self, pid: int, slot: int, code: int) -> None:
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - self.window_s:
            self._deaths.popleft()
        # A negative exit code is the signal that killed it.
        log.error("api worker died", extra={"pid": pid, "slot": slot, "exit_code": code})
        if len(self._deaths) > self.max_deaths:
            log.critical(
                "api workers keep dying: stopping the api",
                extra={"deaths": len(self._deaths), "window_s": self.window_s},
            )
            self._failed = True
            self._stop()
            return
        waited = 0.0
        while waited < self.restart_delay_s and not self._stopping:
            time.sleep(0.1)
            waited += 0.1
        if not self._stopping:
            self._fork(slot)

    def _fork(self, slot: int) -> None:
        parent = os.getpid()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._child(slot, parent)
        self.slots[pid] = slot
        log.info("api worker started", extra={"pid": pid, "slot": slot})
        if self._stopping:  # signalled while forking
            _kill(pid)

    def _child(self, slot: int, parent: int) -> None:
        code = 1
        try:
            # The supervisor's handlers are not the worker's: the api installs its own.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _die_with_parent(parent)
            code = self.work(slot)
        except KeyboardInterrupt:
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("api worker failed", extra={"slot": slot})
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            # Not sys.exit: the parent's atexit handlers and buffers are not the child's.
            os._exit(code)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
        self._stop()

    def _stop(self) -> None:
        self._stopping = True
        # SIGTERM whatever the signal was: a second SIGINT makes uvicorn skip the grace.
        for pid in list(self.slots):
            _kill(pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when its parent dies (Linux); exit if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # died before prctl took effect
        raise SystemExit(1)
