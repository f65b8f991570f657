"""pyproject.toml declares what the code uses, within the versions it works with."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements() -> dict[str, Requirement]:
    """The runtime dependencies, by name."""
    return {r.name: r for r in map(Requirement, PROJECT["dependencies"])}


def test_litestar_is_2_23_or_later_and_not_3() -> None:
    """NamedDependency came in 2.23, and the api leans on Litestar 2 internals."""
    litestar = _requirements()["litestar"].specifier
    assert "2.23.0" in litestar and "2.99" in litestar
    assert "2.22.9" not in litestar and "3.0.0" not in litestar


def test_the_server_extras_the_api_uses_are_declared() -> None:
    """uvloop (anyio's use_uvloop) and httptools (uvicorn's http="auto") are declared."""
    requirements = _requirements()
    assert {"uvloop", "httptools"} <= set(requirements)


def test_uvicorn_comes_without_its_standard_extra() -> None:
    """uvicorn[standard] would pull websockets, watchfiles and python-dotenv, which nothing uses."""
    assert _requirements()["uvicorn"].extras == set()


def test_python_3_11_to_3_13_is_supported() -> None:
    """The image's 3.11 and CI's 3.13 are both allowed; 3.10 is not."""
    allowed = SpecifierSet(PROJECT["requires-python"])
    assert all(v in allowed for v in ("3.11.0", "3.12.0", "3.13.0"))
    assert "3.10.13" not in allowed
