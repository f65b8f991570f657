"""Which process holds the server end of each TCP connection to a port, from /proc (Linux)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

ESTABLISHED = "01"


def _inodes_on(port: int, state: str) -> set[int]:
    """Socket inodes whose local port is `port`, in `state` (hex, as /proc/net/tcp writes it)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(fields[9]))
    return found


def connections(pids: Iterable[int], port: int) -> dict[int, int]:
    """pid -> how many established connections to `port` it holds (server side)."""
    wanted = _inodes_on(port, ESTABLISHED)
    held: dict[int, int] = {}
    for pid in pids:
        count = 0
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in wanted:
                count += 1
        held[pid] = count
    return held
