"""The documentation holds together: every relative link and anchor resolves, every pointer
in code to a page's anchor resolves, README stays short and links every page of docs/."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from tests.unit.markdown import (
    CODE_SPAN,
    DOCS,
    ROOT,
    anchors,
    needs_the_repository,
    prose,
    tracked_texts,
)

pytestmark = needs_the_repository

README_MOST_LINES = 250
LINK = re.compile(r"\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
# `docs/api.md#health` in a comment: a path from the repository's root, then an anchor.
POINTER = re.compile(r"(?<![\w/.#-])((?:[\w-]+/)*[\w-]+\.md)#([\w-]+)")
# How comments pointed into README before docs/ held the reference: the word README and
# a comma or a quoted section title.
SECTION_IN_WORDS = re.compile(r"\bREADME(?:,| \")")


def _markdown() -> dict[str, str]:
    return {name: text for name, text in tracked_texts().items() if name.endswith(".md")}


def _missing(path: PurePosixPath, anchor: str, pages: dict[str, str]) -> str | None:
    """Why `path#anchor` (from the repository's root) does not resolve, or None."""
    if not (ROOT / path).exists():
        return "no such file"
    if anchor and path.suffix == ".md":
        text = pages.get(str(path))
        if text is None or anchor not in anchors(text):
            return f"no anchor #{anchor}"
    return None


def test_every_relative_link_resolves() -> None:
    """Each relative link of a tracked Markdown file names a file that exists and, with an
    anchor, a heading of that page."""
    pages = _markdown()
    broken = []
    checked = 0
    for name, text in pages.items():
        for target in LINK.findall(CODE_SPAN.sub("", prose(text))):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check
            path, _, anchor = target.partition("#")
            resolved = PurePosixPath(name).parent / path if path else PurePosixPath(name)
            parts: list[str] = []
            for part in resolved.parts:
                if part == "..":
                    if not parts:
                        break  # above the repository: GitHub's own pages (the CI badge)
                    parts.pop()
                elif part != ".":
                    parts.append(part)
            else:
                checked += 1
                why = _missing(PurePosixPath(*parts), anchor, pages)
                if why:
                    broken.append(f"{name}: ({target}) {why}")
    assert checked > 50, "the links were not found"
    assert not broken, broken


def test_every_pointer_in_code_resolves() -> None:
    """Each `<page>.md#<anchor>` written in code, configuration or a Markdown code span names a
    page of the repository (from its root) and one of its headings."""
    pages = _markdown()
    broken = []
    pointers = 0
    for name, text in tracked_texts().items():
        where = " ".join(CODE_SPAN.findall(text)) if name.endswith(".md") else text
        for path, anchor in POINTER.findall(where):
            pointers += 1
            why = _missing(PurePosixPath(path), anchor, pages)
            if why:
                broken.append(f"{name}: {path}#{anchor} {why}")
    assert pointers > 20, "the pointers were not found"
    assert not broken, broken


def test_no_comment_names_a_readme_section_in_words() -> None:
    """Code and configuration point to a page by its path and anchor, which the test above
    checks, not to a README section by its title."""
    found = sorted(
        f"{name}: {match.group(0)}"
        for name, text in tracked_texts().items()
        if not name.endswith(".md")
        for match in SECTION_IN_WORDS.finditer(text)
    )
    assert not found, found


def test_readme_is_short() -> None:
    """README is the newcomer's page: what it is, how to start, post and test; the reference
    lives in docs/."""
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MOST_LINES, f"README has {lines} lines; move reference into docs/"


def test_readme_links_every_page_of_docs() -> None:
    """A newcomer finds every page of docs/ from README."""
    readme = (ROOT / "README.md").read_text()
    pages = sorted(page.name for page in DOCS.glob("*.md"))
    assert pages, "docs/ has no page"
    unlinked = [page for page in pages if f"](docs/{page})" not in readme]
    assert not unlinked, unlinked
