"""Scripts and the files mounted into containers are checked out with LF on every platform.

Git for Windows converts text files to CRLF on checkout (core.autocrlf=true) unless
.gitattributes says otherwise; bash in a Linux container then fails on every line.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
    reason="static checks run in native mode, not inside the test container",
)


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def files() -> list[str]:
    """Every tracked file, and new ones not ignored."""
    return git("ls-files", "--cached", "--others", "--exclude-standard").splitlines()


def shell_scripts() -> list[str]:
    """The files check-static lints as shell: *.sh or a sh/bash shebang."""
    found = []
    for path in files():
        full = ROOT / path
        if not full.is_file():
            continue
        if path.endswith(".sh"):
            found.append(path)
            continue
        with full.open("rb") as handle:
            first = handle.readline()
        if first.startswith(b"#!") and (b"bash" in first or first.rstrip().endswith(b"/sh")):
            found.append(path)
    return found


def docker_inputs() -> list[str]:
    """What Docker reads or mounts: the compose file, Dockerfile, cockroach/, kafka/ and
    observability/."""
    inputs = ["compose.yaml", "Dockerfile", ".dockerignore", ".env.example"]
    return inputs + [f for f in files() if f.startswith(("cockroach/", "kafka/", "observability/"))]


def eol(paths: list[str]) -> dict[str, str]:
    """`git check-attr eol` for each path."""
    out = git("check-attr", "eol", "--", *paths)
    return {line.split(": ")[0]: line.split(": ")[2] for line in out.splitlines()}


def test_every_script_is_checked_out_with_lf() -> None:
    """run.sh, stop.sh, test.sh, scripts/* and cockroach/init-cluster.sh have eol=lf."""
    scripts = shell_scripts()
    for required in ("run.sh", "stop.sh", "test.sh", "cockroach/init-cluster.sh"):
        assert required in scripts
    assert {p: v for p, v in eol(scripts).items() if v != "lf"} == {}


def test_every_file_docker_reads_is_checked_out_with_lf() -> None:
    """The compose file, the Dockerfile and every file under cockroach/ and kafka/."""
    assert {p: v for p, v in eol(docker_inputs()).items() if v != "lf"} == {}


def test_mounted_files_are_covered() -> None:
    """Every bind-mounted source in compose.yaml (a file, or each file of a directory) is
    among the files checked above."""
    text = (ROOT / "compose.yaml").read_text()
    lines = [line for line in text.splitlines() if "- ./" in line]
    mounts = [line.split("- ./", 1)[1].split(":", 1)[0] for line in lines]
    assert mounts
    checked = set(docker_inputs()) | set(shell_scripts())
    for mount in mounts:
        inside = [f for f in files() if f == mount or f.startswith(mount + "/")]
        assert inside and set(inside) <= checked, mount


def test_no_file_is_stored_with_crlf() -> None:
    """The repository itself holds LF only, so checkouts have nothing to convert back."""
    crlf = [line for line in git("ls-files", "--eol").splitlines() if "i/crlf" in line.split()[0]]
    assert crlf == []
