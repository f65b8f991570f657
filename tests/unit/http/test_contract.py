"""The OpenAPI spec says what the api does: its statuses, headers, bodies and input rules."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import jsonschema_rs
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from feedsvc.config import Settings
from feedsvc.http.app import ApiParts, create_app
from feedsvc.http.contract import submission_schema
from feedsvc.http.patterns import text_pattern
from feedsvc.messages import (
    CURSOR_PATTERN,
    MAX_TEXT_CHARS,
    Accepted,
    Cursor,
    InvalidSubmission,
    Message,
    MessagePage,
    Problem,
    decode_cursor,
    decode_submission,
    encode_cursor,
)
from feedsvc.metrics import Metrics
from feedsvc.relay.frames import delete_frame, message_frame, reset_frame, resume_frame

# Building the whole app warns of Litestar 2.25 deprecations in handlers others are
# rewriting (inferred dependencies, `Parameter(query=)`); not this test's subject.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EXPECTED_STATUSES = {
    ("post", "/messages"): {"202", "400", "413", "415", "422", "429", "503"},
    ("get", "/messages"): {"200", "400"},
    ("get", "/messages/{message_id}"): {"200", "404"},
    ("get", "/feed"): {"200", "400"},
    ("get", "/health/live"): {"200"},
    ("get", "/health/ready"): {"200", "503"},
    ("get", "/metrics"): {"200"},
}
MESSAGE = Message(
    id=uuid.uuid4(), author="ada", text="hi", created_at=datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC)
)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    # The spec uses none of the collaborators; the access log wraps the app with the metrics.
    real = {"settings", "metrics"}
    unused = {f.name: cast(Any, None) for f in dataclasses.fields(ApiParts) if f.name not in real}
    parts = ApiParts(settings=Settings(), metrics=Metrics(), **unused)
    with TestClient(create_app(parts)) as client:
        response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    return cast(dict[str, Any], response.json())


def validator(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A validator of `schema` whose `#/components/...` references resolve in the spec."""
    return jsonschema_rs.validator_for(
        {**schema, "components": spec["components"]}, validate_formats=True
    )


def response_schema(spec: dict[str, Any], method: str, path: str, status: str) -> dict[str, Any]:
    content = spec["paths"][path][method]["responses"][status]["content"]
    (media,) = content.values()
    return cast(dict[str, Any], media["schema"])


def to_json(value: msgspec.Struct) -> Any:
    return json.loads(msgspec.json.encode(value))


def test_every_operation_answers_exactly_its_statuses(spec: dict[str, Any]) -> None:
    """Each documented operation lists every status it can answer, and no other."""
    found = {
        (method, path): set(operation["responses"])
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }
    assert found == EXPECTED_STATUSES


@pytest.mark.parametrize("status", ["429", "503"])
def test_busy_answers_declare_retry_after(spec: dict[str, Any], status: str) -> None:
    """429 and 503 carry `Retry-After` in seconds, and the spec says so."""
    response = spec["paths"]["/messages"]["post"]["responses"][status]
    assert response["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 0}
    assert response["headers"]["Retry-After"]["required"] is True


def test_an_accepted_post_declares_its_body_and_location(spec: dict[str, Any]) -> None:
    """The 202 body is `Accepted` as the api encodes it; `Location` is declared."""
    response = spec["paths"]["/messages"]["post"]["responses"]["202"]
    assert "Location" in response["headers"]
    accepted = Accepted(id=MESSAGE.id, author="ada", text="hi", created_at=MESSAGE.created_at)
    check = validator(spec, response_schema(spec, "post", "/messages", "202"))
    assert check.is_valid(to_json(accepted))
    assert not check.is_valid({"status_code": 202, "detail": "Accepted"})


def test_every_error_is_documented_in_the_shape_it_is_sent(spec: dict[str, Any]) -> None:
    """Every 4xx/5xx body is `{error, detail, field?}`, as `errors.problem` encodes it."""
    sent = [Problem(error="bad_request", detail="x", field="text"), Problem("not_found", "y")]
    for (method, path), statuses in EXPECTED_STATUSES.items():
        for status in statuses - {"200", "202"}:
            if path == "/health/ready":
                continue  # its 503 is the readiness report, below
            check = validator(spec, response_schema(spec, method, path, status))
            assert all(check.is_valid(to_json(problem)) for problem in sent), (path, status)
            assert not check.is_valid({"status_code": 400, "detail": "x", "extra": {}})


def test_reads_declare_the_bodies_they_send(spec: dict[str, Any]) -> None:
    """A message and a page validate against their documented schemas, and a string does not."""
    message = validator(spec, response_schema(spec, "get", "/messages/{message_id}", "200"))
    page = validator(spec, response_schema(spec, "get", "/messages", "200"))
    assert message.is_valid(to_json(MESSAGE))
    assert page.is_valid(to_json(MessagePage(items=[MESSAGE], next="1_" + "0" * 32)))
    assert page.is_valid(to_json(MessagePage(items=[], next=None)))
    assert not message.is_valid("a string") and not page.is_valid("a string")


def test_readiness_is_documented_for_both_answers(spec: dict[str, Any]) -> None:
    """`/health/ready` answers the same shape with 200 and 503."""
    body = {"database": "ok", "kafka": "unavailable", "feed": "ok", "status": "not ready"}
    for status in ("200", "503"):
        assert validator(spec, response_schema(spec, "get", "/health/ready", status)).is_valid(body)


@pytest.mark.parametrize(
    "frame",
    [
        message_frame("12-8f2c9a1e", MESSAGE),
        message_frame("12-8f2c9a1e~2k3j4", MESSAGE),
        delete_frame("13-8f2c9a1e", MESSAGE.id),
        reset_frame("-1", "unknown position"),
        resume_frame("14", "you fell behind"),
    ],
)
def test_every_feed_event_matches_the_documented_event_schema(
    spec: dict[str, Any], frame: bytes
) -> None:
    """Each kind of frame the feed sends, parsed as an EventSource does, is a documented event."""
    fields = dict(line.split(": ", 1) for line in frame.decode().strip().split("\n"))
    event = {"event": fields["event"], "id": fields["id"], "data": json.loads(fields["data"])}
    check = validator(spec, response_schema(spec, "get", "/feed", "200"))
    assert check.is_valid(event), event
    assert not check.is_valid({**event, "event": "other"})
    assert not check.is_valid({**event, "id": "not an id"})


def parameter(spec: dict[str, Any], method: str, path: str, name: str) -> dict[str, Any]:
    (found,) = [p for p in spec["paths"][path][method]["parameters"] if p["name"] == name]
    return cast(dict[str, Any], found["schema"])


def test_limits_are_bounded_as_the_handlers_check(spec: dict[str, Any]) -> None:
    """`limit` is 1-1000 for pages and 0-1000 for the feed's history."""
    page = parameter(spec, "get", "/messages", "limit")
    feed = parameter(spec, "get", "/feed", "limit")
    assert (page["type"], page["minimum"], page["maximum"]) == ("integer", 1, 1000)
    assert (feed["type"], feed["minimum"], feed["maximum"]) == ("integer", 0, 1000)


def test_the_cursor_pattern_is_in_the_spec(spec: dict[str, Any]) -> None:
    """`before` is documented with the exact pattern `decode_cursor` checks."""
    before = parameter(spec, "get", "/messages", "before")
    assert before["pattern"] == "^" + CURSOR_PATTERN[2:-2] + "$"


def test_a_cursor_survives_its_token() -> None:
    """A token names the position it was made from, and has the documented form."""
    cursor = Cursor(created_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), id=uuid.uuid4())
    token = encode_cursor(cursor)
    assert re.match(CURSOR_PATTERN, token)
    assert decode_cursor(token) == cursor


@given(st.from_regex(CURSOR_PATTERN))
def test_every_token_of_the_documented_form_is_a_position(token: str) -> None:
    """What the spec's pattern allows, `decode_cursor` takes (a client may make one)."""
    decode_cursor(token)


@pytest.mark.parametrize(
    "token",
    [
        "\xff",
        "é",
        "not base64!",
        "A" * 3000,
        "W10",
        "1_" + "0" * 31,
        "1_" + "A" * 32,
        "1" * 18 + "_",
    ],
)
def test_any_other_token_is_refused_in_our_words(token: str) -> None:
    """Anything else gets one plain sentence naming the form, whatever it was."""
    assert not re.match(CURSOR_PATTERN, token)
    with pytest.raises(ValueError, match=r"^before must be a cursor"):
        decode_cursor(token)


# --- the body of POST /messages ---


def accepted(author: str, text: str) -> bool:
    try:
        decode_submission(json.dumps({"author": author, "text": text}).encode())
    except InvalidSubmission:
        return False
    return True


def allowed(text: str) -> bool:
    """What the spec allows for `text` (Python's `re` reads the ECMA pattern alike)."""
    return len(text) <= MAX_TEXT_CHARS and re.fullmatch(text_pattern(), text) is not None


def test_the_example_is_a_valid_submission() -> None:
    """Swagger UI pre-fills the example: it must be accepted as it is."""
    schema = submission_schema()
    assert schema.examples
    example = schema.examples[0]
    assert decode_submission(json.dumps(example).encode()).author == "ada"


@pytest.mark.parametrize("author", ["a", "A_9" * 10 + "xy", "ada\n", "", "é", "x" * 33])
def test_the_author_pattern_agrees_with_the_validator(author: str) -> None:
    """An author the spec's pattern allows is one the api accepts, and no other."""
    schema = submission_schema()
    assert schema.properties is not None
    pattern = schema.properties["author"].pattern  # type: ignore[union-attr]
    assert pattern is not None
    # ECMA `$` is the end of input; Python's `\\Z` is the same.
    matches = re.fullmatch(pattern.removeprefix("^").removesuffix("$"), author) is not None
    assert matches == accepted(author, "hi"), author


def test_the_text_pattern_agrees_with_the_validator_on_every_character() -> None:
    """Each code point alone, and inside a word, is allowed iff it is accepted."""
    for code in [*range(0x10000), *range(0x10000, sys.maxunicode + 1, 97), 0xE0001, 0x1D173]:
        if 0xD800 <= code <= 0xDFFF:
            continue  # not text: JSON carries it only as an escape, which the api refuses
        char = chr(code)
        for text in (char, f"a{char}b"):
            assert allowed(text) == accepted("ada", text), (hex(code), text)


@settings(max_examples=300)
@given(
    st.text(
        st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u200b\u2028\u3164\x00\x07\x7fa1é😀\u0301"),
        max_size=12,
    )
)
def test_the_text_pattern_agrees_with_the_validator_on_mixtures(text: str) -> None:
    """Short mixtures of white space, controls, invisible and visible characters agree."""
    assert allowed(text) == accepted("ada", text), repr(text)


def test_a_long_text_is_allowed_up_to_the_limit_untrimmed() -> None:
    """The spec bounds the untrimmed text, which the api always accepts up to 280."""
    assert allowed("x" * MAX_TEXT_CHARS) and accepted("ada", "x" * MAX_TEXT_CHARS)
    assert not allowed("x" * (MAX_TEXT_CHARS + 1))
    assert not accepted("ada", "x" * (MAX_TEXT_CHARS + 1))
