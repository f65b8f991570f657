"""Unit tests of the bot run on asyncio, the loop `python -m bot` uses."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
