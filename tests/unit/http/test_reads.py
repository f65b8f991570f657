"""The `before` cursor of `GET /messages`: opaque tokens, and a clear refusal of any other."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from feedsvc.messages import Cursor, decode_cursor, encode_cursor


def test_a_cursor_survives_its_token() -> None:
    """A token this api issued names the position it was made from."""
    cursor = Cursor(created_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), id=uuid.uuid4())
    assert decode_cursor(encode_cursor(cursor)) == cursor


@pytest.mark.parametrize(
    "token",
    ["\xff", "é", "not base64!", "A" * 3000, "W10", "WyJ4IiwieSJd", ""],
)
def test_any_other_token_is_refused_in_our_words(token: str) -> None:
    """Non-ASCII, non-base64, and base64 of the wrong JSON all say the same plain thing."""
    with pytest.raises(ValueError, match=r"^before is not a cursor this api issued$"):
        decode_cursor(token)
