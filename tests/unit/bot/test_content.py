"""Generated messages are varied, reproducible, and always pass the api's validation."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.content import MessageGenerator
from feedsvc.messages import (
    AUTHOR_PATTERN,
    MAX_BODY_BYTES,
    MAX_TEXT_CHARS,
    decode_submission,
    encode,
)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(min_value=-(2**63), max_value=2**63), authors=st.integers(1, 300))
def test_every_message_passes_the_api_validation(seed: int, authors: int) -> None:
    """For any seed, every message passes `decode_submission` unchanged and fits the body limit."""
    generator = MessageGenerator(seed, authors)
    for _ in range(100):
        message = generator.next()
        body = encode(message)
        assert len(body) <= MAX_BODY_BYTES
        assert decode_submission(body) == message  # nothing had to be trimmed either


def test_messages_are_varied() -> None:
    """A few thousand messages use every author and include tags, mentions, non-ASCII, emoji."""
    generator = MessageGenerator(seed=7, authors=40)
    messages = [generator.next() for _ in range(3000)]
    texts = [m.text for m in messages]
    assert {m.author for m in messages} == set(generator.authors)
    assert sum("#" in t for t in texts) > 300
    assert sum(re.search(r"@\w+", t) is not None for t in texts) > 300
    assert sum(any(ord(c) > 0x2FF and ord(c) < 0x1F000 for c in t) for t in texts) > 300
    assert sum(any(ord(c) >= 0x1F300 for c in t) for t in texts) > 300
    assert any("\n" in t for t in texts)
    lengths = {len(t) for t in texts}
    assert 1 in lengths and MAX_TEXT_CHARS in lengths
    assert len(lengths) > 200
    assert len(set(texts)) > 2900


def test_authors_are_distinct_and_valid() -> None:
    """Asked for many authors, the generator makes that many distinct valid names."""
    authors = MessageGenerator(seed=1, authors=20_000).authors
    assert len(set(authors)) == 20_000
    assert all(re.fullmatch(AUTHOR_PATTERN, a) for a in authors)


def test_same_seed_same_messages() -> None:
    """A seed replays the same messages; another seed gives others."""

    def first_fifty(seed: int) -> list[object]:
        generator = MessageGenerator(seed, authors=10)
        return [generator.next() for _ in range(50)]

    assert first_fifty(42) == first_fifty(42)
    assert first_fifty(42) != first_fifty(43)
