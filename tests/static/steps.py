"""What the workflow tests share: a script's steps, found in the order they must run."""

from __future__ import annotations


def assert_in_order(text: str, steps: list[str]) -> None:
    """Each step occurs in `text`, and their first occurrences come in the given order."""
    positions = [text.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p == -1]
    assert positions == sorted(positions)
