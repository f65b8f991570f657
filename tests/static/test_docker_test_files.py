"""scripts/docker_test_files.py copies what the Dockerfile's test stage holds, no more."""

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


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docker_test_files", ROOT / "scripts" / "docker_test_files.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_test_stage_holds_its_own_and_its_parents_copies() -> None:
    """COPYs of the test stage and of the stage it is built FROM count; the runtime's do not."""
    dockerfile = (
        "FROM python:3.11 AS builder\nCOPY pyproject.toml uv.lock ./\nCOPY feedsvc/ feedsvc/\n"
        "FROM builder AS test\nCOPY tests/ tests/\n"
        "FROM python:3.11 AS runtime\nCOPY --from=builder /app/.venv /app/.venv\nCOPY bot/ bot/\n"
    )
    assert _module().copied_sources(dockerfile) == ["pyproject.toml", "uv.lock", "feedsvc", "tests"]


def test_the_file_set_has_the_code_and_not_the_repository() -> None:
    """The copied set holds the suite and the package, never ARCHITECTURE.md or .git."""
    files = _module().file_set()
    assert "tests/unit/test_architecture.py" in files and "feedsvc/__init__.py" in files
    assert "ARCHITECTURE.md" not in files
    assert not any(path.startswith(".git/") or path.endswith(".pyc") for path in files)


def test_test_sh_runs_the_check_natively() -> None:
    """./test.sh's native path runs the file-set check before pytest."""
    text = (ROOT / "test.sh").read_text()
    native = text.split("exec scripts/test-in-docker", 1)[1]
    assert "scripts/docker_test_files.py" in native
    assert native.index("scripts/docker_test_files.py") < native.index('pytest "$@"')
