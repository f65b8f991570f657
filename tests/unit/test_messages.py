"""The validation rules of DESIGN §4, and ids under Idempotency-Key."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feedsvc.messages import (
    InvalidSubmission,
    Message,
    Submission,
    decode_message,
    decode_submission,
    encode,
    new_message,
)


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
        (body(author="adé", text="hi"), "author"),
        (body(author=7, text="hi"), "author"),
        (body(author="ada", text=None), "text"),
        (body(author="ada", text="   "), "text"),
        (body(author="ada", text="x" * 281), "text"),
        (body(author="ada", text="bell\x07"), "text"),
        (body(author="ada", text="nul\x00"), "text"),
        (body(author="ada", text="tab\there"), "text"),
        (body(author="ada", text="hi", extra=1), "extra"),
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
