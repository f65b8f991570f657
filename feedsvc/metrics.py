"""Process metrics in the Prometheus text format, without a client library."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Counters and gauges of one process.

    Note: updated from one event loop only, so plain dict arithmetic is safe.
    """

    def __init__(self) -> None:
        self._help: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._gauges: dict[str, Callable[[], float | None]] = {}

    def counter(self, name: str, help_text: str) -> None:
        """Declare a counter, so it shows (as 0) before its first increment."""
        self._help[name] = ("counter", help_text)
        self._counters.setdefault(name, {})

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add to a declared counter."""
        series = self._counters[name]
        key = tuple(sorted(labels.items()))
        series[key] = series.get(key, 0) + amount

    def gauge(self, name: str, help_text: str, read: Callable[[], float | None]) -> None:
        """A gauge whose value is read when metrics are rendered; None hides it."""
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (0 when never incremented)."""
        return self._counters[name].get(tuple(sorted(labels.items())), 0)

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        lines: list[str] = []
        for name, (kind, help_text) in sorted(self._help.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            if kind == "gauge":
                value = self._gauges[name]()
                if value is not None:
                    lines.append(f"{name} {value:g}")
                continue
            for labels, amount in sorted(self._counters[name].items()) or [((), 0.0)]:
                text = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{name}{{{text}}} {amount:g}" if text else f"{name} {amount:g}")
        return "\n".join(lines) + "\n"
