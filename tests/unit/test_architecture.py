"""ARCHITECTURE.md's anchors: every pointer to one resolves, and no pointer names a document
the repository does not have."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
POINTER = re.compile(r"ARCHITECTURE\.md#([a-z0-9-]+)")

# The test image holds the code, not the repository: the Dockerfile's test stage copies
# neither ARCHITECTURE.md nor .git (scripts/docker_test_files.py checks that file set).
needs_the_repository = pytest.mark.skipif(
    os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
    reason="reads ARCHITECTURE.md and `git ls-files`, which the test image does not have; "
    "checked natively",
)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading slugs (lower case, punctuation dropped, spaces as -) and `<a id>`s."""
    slugs = {
        re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    }
    return slugs | set(re.findall(r'<a id="([a-z0-9-]+)"></a>', markdown))


def _tracked_texts() -> dict[str, str]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    texts = {}
    for name in names:
        path = ROOT / name
        if path.is_file() and not path.is_symlink():
            try:
                texts[name] = path.read_text()
            except UnicodeDecodeError:
                continue
    return texts


@needs_the_repository
def test_every_pointer_names_an_anchor() -> None:
    """Each pointer to an anchor of ARCHITECTURE.md, in code, tests, configs and docs, resolves."""
    anchors = _anchors(ARCHITECTURE.read_text())
    pointers = {
        f"{name}: {anchor}"
        for name, text in _tracked_texts().items()
        for anchor in POINTER.findall(text)
    }
    assert pointers, "no file points into ARCHITECTURE.md"
    missing = sorted(p for p in pointers if p.rsplit(": ", 1)[1] not in anchors)
    assert not missing, f"pointers to anchors ARCHITECTURE.md does not have: {missing}"


@needs_the_repository
def test_no_pointer_to_the_design_draft() -> None:
    """The design draft is not in the repository: comments point to ARCHITECTURE.md instead."""
    stale = re.compile("DESIGN(\\.md)? (\u00a7|section )")
    found = sorted(name for name, text in _tracked_texts().items() if stale.search(text))
    assert not found


def test_readme_links_the_architecture() -> None:
    """A newcomer finds it from the README."""
    assert "](ARCHITECTURE.md)" in (ROOT / "README.md").read_text()
