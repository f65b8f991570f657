"""What the documentation tests read: the repository's tracked files, Markdown headings as
GitHub links them, the tables of a page."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# The test image holds the code, not the repository: the Dockerfile's test stage copies
# neither docs/, ARCHITECTURE.md nor .git (scripts/docker_test_files.py checks that file set).
needs_the_repository = pytest.mark.skipif(
    os.environ.get("FEEDSVC_TEST_BACKEND") == "cockroach",
    reason="reads docs/, ARCHITECTURE.md and `git ls-files`, which the test image does not "
    "have; checked natively",
)

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", flags=re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"``.+?``|`[^`\n]+`")


def prose(markdown: str) -> str:
    """The text outside fenced code blocks (a `# comment` in a console block is no heading)."""
    return FENCE.sub("", markdown)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text in lower case, every character but
    letters, digits, `_`, `-` and spaces dropped, each space a `-` (github-slugger)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link shows its text
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a page has: its headings' slugs (a repeated one gets -1, -2, ... as on
    GitHub) and its `<a id>`s."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+?) *#*$", prose(markdown), flags=re.MULTILINE):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found | set(re.findall(r'<a id="([^"]+)"></a>', markdown))


def tracked_texts() -> dict[str, str]:
    """Every tracked text file of the working tree, by its path from the repository's root."""
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
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


def table_rows(markdown: str, header: str) -> list[list[str]]:
    """The cells of each row of the table whose header line is `header` (cells stripped)."""
    lines = markdown.splitlines()
    start = lines.index(header)  # ValueError names a table that moved or changed its columns
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        # No cell of the tables read here holds a `|` of its own.
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows
