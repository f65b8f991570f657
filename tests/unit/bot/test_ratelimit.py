"""The IETF `RateLimit` field is read: a spent policy (`r=0`) means wait its `t`."""

from __future__ import annotations

import pytest

from bot.backpressure import DEFAULT_RETRY_AFTER_S, MAX_RETRY_AFTER_S
from bot.ratelimit import spent_wait


@pytest.mark.parametrize(
    ("field", "wait"),
    [
        ('"posts";r=0;t=10', 10.0),
        ('"posts";r=12;t=10', None),
        ('"posts";r=5;t=10, "inflight";r=0;t=1', 1.0),
        ('"posts";r=0;t=10, "inflight";r=0;t=1', 10.0),
        ('"posts";r=0', DEFAULT_RETRY_AFTER_S),
        ('"a,b;c";r=0;t=3', 3.0),  # separators inside the name are the name's
        ("default;r=0;t=86400", MAX_RETRY_AFTER_S),
        ('"daily";r=999;pk=:dHJpYWwxMjEzMjM=:', None),
        ("", None),
        (None, None),
    ],
)
def test_spent_quota_gives_the_wait(field: str | None, wait: float | None) -> None:
    """`r=0` under any policy gives that policy's window; quota left gives None."""
    assert spent_wait(field) == wait
