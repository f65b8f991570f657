"""scripts/smoke.py's verdicts on a drill, without a server: the feed-stall bound."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
    reason="static checks run in native mode, not inside the test container",
)


def _smoke() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smoke", ROOT / "scripts" / "smoke.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_message_late_on_the_feed_is_reported() -> None:
    """A message that reached the feed 61 s after its 202 breaks a 60 s bound."""
    late = _smoke().stalled({"a": 10.0, "b": 11.0}, {"a": 12.0, "b": 72.0}, 60.0)
    assert late == ["b reached the feed 61.0 s after its 202"]


def test_messages_within_the_bound_pass() -> None:
    """Messages on the feed within the bound, and ones not there yet, are not called late."""
    assert _smoke().stalled({"a": 10.0, "b": 11.0}, {"a": 69.0}, 60.0) == []
