"""ARCHITECTURE.md's anchors: every pointer to one resolves, and no pointer names a document
the repository does not have."""

from __future__ import annotations

import re

from tests.unit.markdown import ROOT, anchors, needs_the_repository, tracked_texts

ARCHITECTURE = ROOT / "ARCHITECTURE.md"
POINTER = re.compile(r"ARCHITECTURE\.md#([a-z0-9-]+)")


@needs_the_repository
def test_every_pointer_names_an_anchor() -> None:
    """Each pointer to an anchor of ARCHITECTURE.md, in code, tests, configs and docs, resolves."""
    found = anchors(ARCHITECTURE.read_text())
    pointers = {
        f"{name}: {anchor}"
        for name, text in tracked_texts().items()
        for anchor in POINTER.findall(text)
    }
    assert pointers, "no file points into ARCHITECTURE.md"
    missing = sorted(p for p in pointers if p.rsplit(": ", 1)[1] not in found)
    assert not missing, f"pointers to anchors ARCHITECTURE.md does not have: {missing}"


@needs_the_repository
def test_no_pointer_to_the_design_draft() -> None:
    """The design draft is not in the repository: comments point to ARCHITECTURE.md instead."""
    stale = re.compile("DESIGN(\\.md)? (\u00a7|section )")
    found = sorted(name for name, text in tracked_texts().items() if stale.search(text))
    assert not found


def test_readme_links_the_architecture() -> None:
    """A newcomer finds it from the README."""
    assert "](ARCHITECTURE.md)" in (ROOT / "README.md").read_text()
