"""The spec's body of `POST /messages` says what the validator enforces."""

from __future__ import annotations

import json
import re

import pytest
from litestar.openapi.spec import RequestBody

from feedsvc.http.contract import SUBMISSION, SubmitOperation
from feedsvc.messages import MAX_TEXT_CHARS, InvalidSubmission, decode_submission


def test_the_example_is_a_valid_submission() -> None:
    """Swagger UI pre-fills the example: it must be accepted as it is."""
    assert SUBMISSION.examples
    example = SUBMISSION.examples[0]
    assert decode_submission(json.dumps(example).encode()).author == "ada"


@pytest.mark.parametrize("author", ["a", "A_9" * 10 + "xy", "ada\n", "", "é", "x" * 33])
def test_the_author_pattern_agrees_with_the_validator(author: str) -> None:
    """An author the spec's pattern allows is one the api accepts, and no other."""
    assert SUBMISSION.properties is not None
    pattern = SUBMISSION.properties["author"].pattern  # type: ignore[union-attr]
    assert pattern is not None
    # ECMA `$` is the end of input; Python's `\\Z` is the same.
    allowed = re.fullmatch(pattern.removeprefix("^").removesuffix("$"), author) is not None
    body = json.dumps({"author": author, "text": "hi"}).encode()
    try:
        decode_submission(body)
        accepted = True
    except InvalidSubmission:
        accepted = False
    assert allowed == accepted, author


def test_the_operation_declares_a_required_json_body() -> None:
    """Litestar cannot infer the body of a handler that reads it raw; the operation does."""
    operation = SubmitOperation()
    body = operation.request_body
    assert isinstance(body, RequestBody)
    assert body.required
    assert set(body.content) == {"application/json"}
    assert SUBMISSION.properties is not None
    assert SUBMISSION.properties["text"].max_length == MAX_TEXT_CHARS  # type: ignore[union-attr]
    assert SUBMISSION.additional_properties is False
