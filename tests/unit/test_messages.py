"""The wire shapes: validation rules (ARCHITECTURE.md#bad-input), ids, pinned JSON bytes."""

from __future__ import annotations

import ast
import json
import re
import unicodedata
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from feedsvc.messages import (
    AUTHOR_PATTERN,
    Accepted,
    Cursor,
    Deleted,
    InvalidSubmission,
    Message,
    MessagePage,
    Problem,
    ResetNotice,
    ResumeNotice,
    Submission,
    decode_cursor,
    decode_message,
    decode_submission,
    encode,
    encode_cursor,
    is_visible,
    new_message,
)

ROOT = Path(__file__).resolve().parents[2]


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_valid_submission_is_trimmed() -> None:
    """Surrounding white space is dropped from the text; the author is kept as sent."""
    got = decode_submission(body(author="ada_99", text="  hello\nworld \t"))
    assert got == Submission(author="ada_99", text="hello\nworld")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (body(text="hi"), "author"),
        (body(author="ada"), "text"),
        (body(author="", text="hi"), "author"),
        (body(author="a" * 33, text="hi"), "author"),
        (body(author="ada lovelace", text="hi"), "author"),
        (body(author="ada\n", text="hi"), "author"),
        (body(author="\nada", text="hi"), "author"),
        (body(author="adé", text="hi"), "author"),
        (body(author=7, text="hi"), "author"),
        (body(author="ada", text=None), "text"),
        (body(author="ada", text="   "), "text"),
        (body(author="ada", text="x" * 281), "text"),
        (body(author="ada", text="bell\x07"), "text"),
        (body(author="ada", text="nul\x00"), "text"),
        (body(author="ada", text="tab\there"), "text"),
        (body(author="ada", text="hi", extra=1), "extra"),
        (body(author="ada", text="\u200b"), "text"),
        (b'{"author": "ada", "text": "caf\xe9"}', "text"),
        (b'{"author": "ada", "text": "\\ud800"}', "text"),
    ],
)
def test_each_rule_names_its_field(raw: bytes, field: str) -> None:
    """Every broken rule is refused with the name of the field at fault."""
    with pytest.raises(InvalidSubmission) as caught:
        decode_submission(raw)
    assert caught.value.field == field
    assert caught.value.detail


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"[1, 2]", b'"text"', b"null"])
def test_non_objects_are_refused(raw: bytes) -> None:
    """A body that is not a JSON object is refused with a readable reason."""
    with pytest.raises(InvalidSubmission) as caught:
        decode_submission(raw)
    assert caught.value.detail


def test_text_limit_counts_characters_not_bytes() -> None:
    """280 emoji are 280 characters, within the limit, though 1,120 bytes of UTF-8."""
    assert decode_submission(body(author="ada", text="🙂" * 280)).text == "🙂" * 280
    with pytest.raises(InvalidSubmission):
        decode_submission(body(author="ada", text="🙂" * 281))


def test_same_idempotency_key_same_id() -> None:
    """A retry with the same key and author gets the same id; another author does not."""
    sub = Submission(author="ada", text="hi")
    first, again = new_message(sub, "key-1"), new_message(sub, "key-1")
    assert first.id == again.id
    assert new_message(Submission(author="bob", text="hi"), "key-1").id != first.id
    assert new_message(sub, "key-2").id != first.id
    assert new_message(sub).id != new_message(sub).id


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=280))
def test_message_round_trips(text: str) -> None:
    """A message decodes from its own encoding unchanged."""
    message = new_message(Submission(author="ada", text=text))
    assert decode_message(encode(message)) == message
    assert isinstance(decode_message(encode(message)), Message)


@pytest.mark.parametrize(
    ("raw", "detail", "field"),
    [
        (
            body(author="ada lovelace", text="hi"),
            "author must be 1-32 characters of A-Z, a-z, 0-9 and _",
            "author",
        ),
        (
            body(author="ada\n", text="hi"),
            "author must be 1-32 characters of A-Z, a-z, 0-9 and _",
            "author",
        ),
        (
            body(author="", text="hi"),
            "author must be 1-32 characters of A-Z, a-z, 0-9 and _",
            "author",
        ),
        (body(text="hi"), "author is required", "author"),
        (body(author="ada"), "text is required", "text"),
        (
            body(author="ada", text="hi", admin=True),
            "unknown field 'admin': the body has only the fields author and text",
            "admin",
        ),
        (body(author=5, text="hi"), "author must be a string, not a number", "author"),
        (body(author="ada", text=None), "text must be a string, not null", "text"),
        (body(author="ada", text=["hi"]), "text must be a string, not an array", "text"),
        (b"[]", "body must be a JSON object with the fields author and text", None),
        (b'"hi"', "body must be a JSON object with the fields author and text", None),
        (
            b"{not json",
            "body is not valid JSON: JSON is malformed: object keys must be strings (byte 1)",
            None,
        ),
        (body(author="ada", text=" \n "), "text must not be empty", "text"),
        (
            body(author="ada", text="x" * 281),
            "text is 281 characters long, the limit is 280",
            "text",
        ),
        (
            body(author="ada", text="bell\x07"),
            "text must not contain control characters (newline is allowed): U+0007 at character 5",
            "text",
        ),
        (
            body(author="ada", text="\u200b\u3164"),
            "text has no visible character, only white space and invisible characters "
            "such as U+200B",
            "text",
        ),
        (
            b'{"author": "ada", "text": "\\ud800"}',
            "text is not valid Unicode: lone surrogate U+D800",
            "text",
        ),
        (
            b'{"author": "ada", "text": "\\ud800 and more"}',
            "text is not valid Unicode: lone surrogate U+D800",
            "text",
        ),
        (
            b'{"author": "ada", "text": "\\udc00"}',
            "text is not valid Unicode: lone surrogate U+DC00",
            "text",
        ),
        (
            b'{"author": "ada", "text": "caf\xe9"}',
            "text is not valid UTF-8: byte 0xe9 at offset 30",
            "text",
        ),
        (
            b'{"author": "ad\xffa", "text": "hi"}',
            "author is not valid UTF-8: byte 0xff at offset 14",
            "author",
        ),
        (b'{"te\xffxt": "hi"}', "a field name is not valid UTF-8: byte 0xff at offset 4", None),
        (b"\xff", "body is not valid UTF-8: byte 0xff at offset 0", None),
    ],
)
def test_users_see_what_is_wrong(raw: bytes, detail: str, field: str | None) -> None:
    """Each broken rule is explained in plain words, never in msgspec's or Python's."""
    with pytest.raises(InvalidSubmission) as caught:
        decode_submission(raw)
    assert (caught.value.detail, caught.value.field) == (detail, field)


INVISIBLE = [
    "\u200b",  # ZERO WIDTH SPACE (Cf)
    "\u200c",  # ZERO WIDTH NON-JOINER (Cf)
    "\u200d",  # ZERO WIDTH JOINER (Cf)
    "\u2060",  # WORD JOINER (Cf)
    "\ufeff",  # ZERO WIDTH NO-BREAK SPACE (Cf)
    "\u00ad",  # SOFT HYPHEN (Cf)
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE (Cf)
    "\U000e0020",  # TAG SPACE (Cf)
    "\u2028",  # LINE SEPARATOR (Zl)
    "\u2029",  # PARAGRAPH SEPARATOR (Zp)
    "\u3000",  # IDEOGRAPHIC SPACE (Zs)
    "\u2800",  # BRAILLE PATTERN BLANK (So)
    "\u3164",  # HANGUL FILLER (Lo)
    "\uffa0",  # HALFWIDTH HANGUL FILLER (Lo)
    "\u115f",  # HANGUL CHOSEONG FILLER (Lo)
    "\u1160",  # HANGUL JUNGSEONG FILLER (Lo)
    "\u034f",  # COMBINING GRAPHEME JOINER (Mn)
    "\ufe0f",  # VARIATION SELECTOR-16 (Mn)
    "\u180e",  # MONGOLIAN VOWEL SEPARATOR (Cf)
]


@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_text_of_invisible_characters_is_refused(char: str) -> None:
    """A text that would look empty is refused, alone, repeated or mixed with spaces."""
    for text in (char, char * 3, f"{char} {char}\n{char}"):
        with pytest.raises(InvalidSubmission) as caught:
            decode_submission(body(author="ada", text=text))
        assert caught.value.field == "text"
    assert not is_visible(char)


@pytest.mark.parametrize(
    "text",
    [
        "a",
        ".",
        "7",
        "\U0001f642",  # an emoji
        "\U0001f44d\u200d",  # an emoji with a joiner: still shows the emoji
        "\u200bhi",  # one zero-width space among letters is fine
        "\u0301",  # a combining mark alone is drawn on a dotted circle
        "\ue000",  # private use: a font draws it (a box at worst)
        "\U0001fae8",  # unassigned in Python 3.11's Unicode 14: may be a newer emoji
        "\u05d0",  # Hebrew letter
        "\u3042",  # Hiragana
    ],
)
def test_text_with_a_visible_character_is_accepted(text: str) -> None:
    """Any letter, mark, number, punctuation, symbol, private-use or newer character shows."""
    assert decode_submission(body(author="ada", text=text)).text == text


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=280))
def test_accepted_text_always_shows_something(text: str) -> None:
    """Whatever is accepted has a character outside the separators, controls and format ones."""
    try:
        got = decode_submission(body(author="ada", text=text))
    except InvalidSubmission:
        return
    assert any(unicodedata.category(c)[0] in "LMNPSC" and is_visible(c) for c in got.text)
    assert any(unicodedata.category(c) not in {"Zs", "Zl", "Zp", "Cc", "Cf"} for c in got.text)


def test_author_pattern_is_anchored_for_re_search() -> None:
    """msgspec applies patterns with re.search: no trailing newline may slip past `$`."""
    assert re.search(AUTHOR_PATTERN, "ada")
    for bad in ("ada\n", "\nada", "ada\nbob", "a" * 33):
        assert not re.search(AUTHOR_PATTERN, bad)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(body(author="ada\n", text="hi"), type=Submission)


def _patterns(path: Path) -> list[tuple[int, object]]:
    """String literals used as regular expressions in one source file."""
    found: list[tuple[int, object]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        named = isinstance(func, ast.Attribute) and func.attr in {"compile", "match", "search"}
        args = [a for a in node.args[:1] if named] + [
            k.value for k in node.keywords if k.arg == "pattern"
        ]
        found += [(a.lineno, a.value) for a in args if isinstance(a, ast.Constant)]
        found += [
            (a.lineno, v.value)
            for a in args
            if isinstance(a, ast.Name)
            for v in _constants(path, a.id)
        ]
    return found


def _constants(path: Path, name: str) -> list[ast.Constant]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]


def test_no_pattern_ends_in_dollar() -> None:
    """Every regular expression in feedsvc/ and bot/ ends in \\Z, since `$` lets "x\\n" match."""
    offenders = []
    for path in sorted([*ROOT.glob("feedsvc/**/*.py"), *ROOT.glob("bot/**/*.py")]):
        for line, pattern in _patterns(path):
            if isinstance(pattern, str) and pattern.endswith("$"):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {pattern!r}")
    assert not offenders


_ID = uuid.UUID("0b7f9e3c-2a4d-4e5f-8a6b-7c8d9e0f1a2b")
_AT = datetime(2026, 11, 28, 10, 30, 0, 123456, tzinfo=UTC)
_MESSAGE = Message(id=_ID, author="ada", text="hi\nthere", created_at=_AT)
_MESSAGE_JSON = (
    b'{"id":"0b7f9e3c-2a4d-4e5f-8a6b-7c8d9e0f1a2b","author":"ada","text":"hi\\nthere",'
    b'"created_at":"2026-11-28T10:30:00.123456Z"'
)


@pytest.mark.parametrize(
    ("shape", "wire"),
    [
        (_MESSAGE, _MESSAGE_JSON + b"}"),
        (
            Accepted(id=_ID, author="ada", text="hi\nthere", created_at=_AT),
            _MESSAGE_JSON + b',"status":"accepted"}',
        ),
        (
            MessagePage(items=[_MESSAGE], next=None),
            b'{"items":[' + _MESSAGE_JSON + b'}],"next":null}',
        ),
        (
            Problem(error="invalid", detail="text is required"),
            b'{"error":"invalid","detail":"text is required"}',
        ),
        (
            Problem(error="invalid", detail="text is required", field="text"),
            b'{"error":"invalid","detail":"text is required","field":"text"}',
        ),
        (Deleted(_ID), b'{"id":"0b7f9e3c-2a4d-4e5f-8a6b-7c8d9e0f1a2b"}'),
        (ResetNotice("topic recreated"), b'{"reason":"topic recreated"}'),
        (ResumeNotice("9-0b7f9e3c", "slow"), b'{"last_event_id":"9-0b7f9e3c","reason":"slow"}'),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, msgspec.Struct) else "",
)
def test_wire_bytes_are_pinned(shape: msgspec.Struct, wire: bytes) -> None:
    """Each shape's JSON, key order included, is what clients and stored records already hold."""
    assert encode(shape) == wire


def test_accepted_is_the_message_plus_its_status() -> None:
    """The 202 body repeats no field of the message: it is the message with `status` added."""
    message_fields = [f.name for f in msgspec.structs.fields(Message)]
    assert [f.name for f in msgspec.structs.fields(Accepted)] == [*message_fields, "status"]
    accepted = msgspec.json.decode(
        encode(Accepted(**msgspec.structs.asdict(_MESSAGE))), type=Accepted
    )
    assert (accepted.status, decode_message(encode(_MESSAGE))) == ("accepted", _MESSAGE)


def test_cursor_token_is_pinned() -> None:
    """A `before` token handed out earlier still names the same position."""
    token = "1795861800123456_0b7f9e3c2a4d4e5f8a6b7c8d9e0f1a2b"
    assert encode_cursor(Cursor(created_at=_AT, id=_ID)) == token
    assert decode_cursor(token) == Cursor(created_at=_AT, id=_ID)
