"""Run tests/unit and tests/static on exactly the files the Dockerfile's test stage holds.

    uv run --frozen python scripts/docker_test_files.py [PYTEST ARGS...]

The test image (scripts/test-in-docker) has only what the `test` stage and the stages
it is built FROM copy, minus what .dockerignore leaves out: no .git, no ARCHITECTURE.md.
A test that reads a file the image lacks passes natively and fails only in Docker;
this copies that file set into a scratch directory and runs the suites that need no
services there, with FEEDSVC_TEST_BACKEND=cockroach as in the image, so each test must
run or skip for a stated reason. ./test.sh runs it natively. Exit status: pytest's.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = "test"
SUITES = ("tests/unit", "tests/static")


def copied_sources(dockerfile: str, stage: str = STAGE) -> list[str]:
    """The build-context paths COPY puts into `stage` and the stages it is built FROM."""
    parents: dict[str, str] = {}
    copies: dict[str, list[str]] = {}
    current = ""
    for line in dockerfile.splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            named = len(words) >= 4 and words[2].upper() == "AS"
            current = words[3] if named else words[1]
            parents[current] = words[1]
            copies[current] = []
        elif words[:1] == ["COPY"] and not any(w.startswith("--from=") for w in words):
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            copies[current] += [s.removeprefix("./").rstrip("/") for s in sources]
    found: list[str] = []
    while stage in copies:
        found = copies[stage] + found
        stage = parents[stage]
    return found


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns leave `path` (or a folder above it) out."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern) or (
                pattern != bare and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], bare)
            ):
                return True
    return False


def file_set(root: Path = ROOT) -> list[str]:
    """Every file of the working tree the test image would hold (tracked or new, not ignored)."""
    sources = copied_sources((root / "Dockerfile").read_text())
    patterns = [
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return sorted(
        path
        for path in listed
        if (root / path).is_file()
        and any(path == s or path.startswith(f"{s}/") for s in sources)
        and not ignored(path, patterns)
    )


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="feedsvc-image-files-") as scratch:
        for path in file_set():
            (Path(scratch) / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, Path(scratch) / path)
        env = {k: v for k, v in os.environ.items() if not re.match(r"FEEDSVC_TEST_", k)}
        env |= {"FEEDSVC_TEST_BACKEND": "cockroach", "GIT_CEILING_DIRECTORIES": scratch}
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *SUITES, *argv]
        return subprocess.run(command, cwd=scratch, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
