"""The body of `POST /messages` and the rules a submitted message must follow."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Annotated

import msgspec

# \A and \Z, not ^ and $: msgspec applies a pattern with re.search, and `$` also
# matches before a final newline, so "ada\n" would pass.
AUTHOR_PATTERN = r"\A[A-Za-z0-9_]{1,32}\Z"
MAX_TEXT_CHARS = 280
MAX_BODY_BYTES = 4096

# Every C0/C1 control character and DEL except the newline.
_FORBIDDEN_CHARS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")

# Code points that render as nothing. Unicode's Default_Ignorable_Code_Point
# (https://www.unicode.org/Public/UCD/latest/ucd/DerivedCoreProperties.txt; e.g.
# U+200B, U+2060, U+3164 HANGUL FILLER, U+FFA0, variation selectors, tags), which
# unicodedata does not expose, plus U+2800 BRAILLE PATTERN BLANK, a symbol that is
# drawn as an empty cell.
BLANK_RANGES = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
# Separators (Zs, Zl, Zp), controls (Cc), format characters (Cf) and surrogates (Cs).
BLANK_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs"})


def is_visible(char: str) -> bool:
    """Whether a character leaves a mark: not a separator, control, format or ignorable.

    Note: letters, marks, numbers, punctuation and symbols are visible, and so are
    private-use and unassigned code points: a font draws them (a box at worst), and
    a code point unassigned in this Python's Unicode version may be a newer emoji.
    """
    if unicodedata.category(char) in BLANK_CATEGORIES:
        return False
    code = ord(char)
    return not any(low <= code <= high for low, high in BLANK_RANGES)


class Submission(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of `POST /messages`."""

    author: Annotated[str, msgspec.Meta(pattern=AUTHOR_PATTERN)]
    text: str


class InvalidSubmission(ValueError):
    """A submission that breaks a rule; `field` names the culprit when there is one."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


_submission_decoder = msgspec.json.Decoder(Submission)

# msgspec's validation errors, as msgspec 0.22 words them (tests/unit/test_messages.py
# pins the message each one becomes, so a change of wording fails there).
_AUTHOR_MISMATCH = re.compile(r"\AExpected `str` matching regex .* - at `\$\.author`\Z", re.S)
_WRONG_TYPE = re.compile(r"\AExpected `\w+`, got `(\w+)` - at `\$\.(\w+)`\Z")
_NOT_OBJECT = re.compile(r"\AExpected `object`, got `(\w+)`\Z")
_UNKNOWN_FIELD = re.compile(r"\AObject contains unknown field `(.*)`\Z", re.S)
_MISSING_FIELD = re.compile(r"\AObject missing required field `(\w+)`\Z")
_JSON_TYPES = {
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
    "str": "a string",
    "array": "an array",
    "object": "an object",
}
_SHAPE = "body must be a JSON object with the fields author and text"


def decode_submission(body: bytes) -> Submission:
    """Decode and validate a `POST /messages` body; the text comes back trimmed.

    Raises `InvalidSubmission` saying what is wrong in words a person reads, naming
    the field at fault when there is one.
    """
    try:
        body.decode("utf-8")  # msgspec would raise a bare UnicodeDecodeError
    except UnicodeDecodeError as exc:
        raise _not_utf8(body, exc.start) from None
    try:
        raw = _submission_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _explain(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise _undecodable(body, str(exc)) from None
    text = raw.text.strip()
    if not text:
        raise InvalidSubmission("text must not be empty", "text")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidSubmission(
            f"text is {len(text)} characters long, the limit is {MAX_TEXT_CHARS}", "text"
        )
    if control := _FORBIDDEN_CHARS.search(text):
        raise InvalidSubmission(
            "text must not contain control characters (newline is allowed): "
            f"{_name(control.group())} at character {control.start() + 1}",
            "text",
        )
    if not any(map(is_visible, text)):
        raise InvalidSubmission(
            "text has no visible character, only white space and invisible characters "
            f"such as {_name(text[0])}",
            "text",
        )
    return Submission(author=raw.author, text=text)


def _explain(error: str) -> InvalidSubmission:
    """msgspec's validation error as a person would want it said."""
    if _AUTHOR_MISMATCH.match(error):
        return InvalidSubmission("author must be 1-32 characters of A-Z, a-z, 0-9 and _", "author")
    if match := _WRONG_TYPE.match(error):
        got, field = match.groups()
        return InvalidSubmission(
            f"{field} must be a string, not {_JSON_TYPES.get(got, got)}", field
        )
    if _NOT_OBJECT.match(error):
        return InvalidSubmission(_SHAPE)
    if match := _UNKNOWN_FIELD.match(error):
        field = match.group(1)[:64]
        return InvalidSubmission(
            f"unknown field {field!r}: the body has only the fields author and text", field
        )
    if match := _MISSING_FIELD.match(error):
        field = match.group(1)
        return InvalidSubmission(f"{field} is required", field)
    return InvalidSubmission(error)


def _undecodable(body: bytes, error: str) -> InvalidSubmission:
    """Why a body is not JSON; a lone surrogate escape is named (msgspec says "truncated")."""
    # The stdlib parser accepts a lone "\ud800" escape: where it succeeds and msgspec
    # did not, a string holds a surrogate that no UTF-8 text can carry.
    found = _culprit(body.decode("utf-8"), lambda c: "\ud800" <= c <= "\udfff")
    if found is not None:
        where, char = found
        return InvalidSubmission(
            f"{where or 'a field name'} is not valid Unicode: lone surrogate {_name(char)}", where
        )
    return InvalidSubmission(f"body is not valid JSON: {error}")


def _not_utf8(body: bytes, offset: int) -> InvalidSubmission:
    """Invalid UTF-8, naming the field whose string holds the bad byte when it can."""
    # surrogateescape turns each undecodable byte into one of U+DC80..U+DCFF.
    text = body.decode("utf-8", "surrogateescape")
    found = _culprit(text, lambda c: "\udc80" <= c <= "\udcff")
    where = found[0] if found is not None else None
    label = where or ("a field name" if found is not None else "body")
    return InvalidSubmission(
        f"{label} is not valid UTF-8: byte 0x{body[offset]:02x} at offset {offset}", where
    )


def _culprit(text: str, bad: Callable[[str], bool]) -> tuple[str | None, str] | None:
    """(the field, None for a field name) whose string holds a `bad` character, and it."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    for key, item in value.items():
        for where, string in ((None, key), (key, item)):
            if isinstance(string, str) and (char := next(filter(bad, string), None)):
                return where, char
    return None


def _name(char: str) -> str:
    return f"U+{ord(char):04X}"
