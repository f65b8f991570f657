"""How a benchmark talks: progress on stderr, the machine's conditions, the JSON last line."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import msgspec


def say(text: str) -> None:
    """A progress line on stderr (stdout carries only results)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """The machine's side of a result's `conditions`."""
    return {"cpu_count": os.cpu_count(), "python": platform.python_version()}


def emit(result: msgspec.Struct) -> None:
    """Print `result` as one JSON line on stdout (the last line a scenario prints)."""
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    sys.stdout.flush()


def summary(name: str, result: msgspec.Struct) -> None:
    """The human summary on stderr: the result's figures, one per line, conditions left out."""
    say(f"--- {name} ---")
    for key, value in msgspec.structs.asdict(result).items():
        if key != "conditions":
            say(f"  {key}: {value}")
