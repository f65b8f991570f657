"""Regular expressions of the OpenAPI spec, written so that every reader agrees on them.

JSON Schema patterns are ECMA-262 regexes; schemathesis validates with Rust's `regex` and
generates with Python's `re`. The patterns here read alike in all three, and the text's
is derived from the validator's own tables (`feedsvc.messages`), so the spec cannot say
otherwise than the api does (tests/unit/http/test_contract.py checks every code point).
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from collections.abc import Iterable

from feedsvc.messages.submission import (  # the blank tables: `is_visible`'s own definition
    BLANK_CATEGORIES,
    BLANK_RANGES,
)

_FORBIDDEN = ((0x00, 0x09), (0x0B, 0x1F), (0x7F, 0x9F))
"""The control characters a text must not hold (all but newline), as `decode_submission`
refuses them; tests/unit/http/test_contract.py checks the two agree on every character."""


def ecma(python_pattern: str) -> str:
    """A Python `\\A...\\Z` regex as JSON Schema writes it (ECMA-262: `$` ends the input)."""
    return "^" + python_pattern.removeprefix("\\A").removesuffix("\\Z") + "$"


def _char_class(ranges: Iterable[tuple[int, int]], negate: bool = False) -> str:
    """A regex class that ECMA-262 (with `u`), Rust's regex and Python's `re` all read alike:
    `\\uXXXX` escapes in the BMP, the characters themselves above it."""

    def one(code: int) -> str:
        return f"\\u{code:04X}" if code <= 0xFFFF else chr(code)

    body = "".join(one(lo) if lo == hi else f"{one(lo)}-{one(hi)}" for lo, hi in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _ranges(codes: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for code in codes:
        if out and out[-1][1] == code - 1:
            out[-1] = (out[-1][0], code)
        else:
            out.append((code, code))
    return out


@functools.cache
def text_pattern() -> str:
    """The ECMA pattern of a text the api accepts, but for its length after trimming.

    Note: `decode_submission` trims white space (`str.strip`), then wants no control
    character but newline and at least one visible character. So a text is: white space,
    allowed characters, a visible one, allowed characters, white space. The trimmed
    length (1-280) a pattern cannot say usably; `maxLength` bounds the untrimmed text,
    which the api accepts whenever it is 280 or less. Built once per process (it scans
    every code point; tests check it against `decode_submission`).
    """
    spaces: list[int] = []
    invisible: set[int] = set()
    category = unicodedata.category
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if char.isspace():
            spaces.append(code)
        # `is_visible` per code point takes seconds; its own two tables give the same set.
        if category(char) in BLANK_CATEGORIES:
            invisible.add(code)
    invisible.update(c for low, high in BLANK_RANGES for c in range(low, high + 1))
    # Surrogates are no text (JSON carries them only as escapes, which the api refuses), and
    # Rust's regex, which schemathesis validates with, cannot name them.
    invisible.difference_update(range(0xD800, 0xE000))
    space = _char_class(_ranges(spaces))
    allowed = _char_class(_FORBIDDEN, negate=True)
    visible = _char_class(_ranges(sorted(invisible)), negate=True)
    return f"^{space}*{allowed}*{visible}{allowed}*{space}*$"
