"""The README's configuration table matches the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from feedsvc.config import PREFIX, Settings

README = Path(__file__).parents[2] / "README.md"


def test_readme_documents_every_setting_and_no_other() -> None:
    """Each FEED_* setting has a row in README, and README names no FEED_* that does not exist."""
    text = README.read_text()
    rows = set(re.findall(r"^\| `(FEED_[A-Z0-9_]+)` \|", text, flags=re.MULTILINE))
    fields = {PREFIX + f.name.upper() for f in msgspec.structs.fields(Settings)}
    assert rows == fields
    # FEED_URL is what `scripts/local-stack up` prints, not a setting.
    mentioned = set(re.findall(r"\bFEED_[A-Z0-9_]+\b", text)) - {"FEED_URL"}
    assert mentioned <= fields, f"README names settings that do not exist: {mentioned - fields}"
