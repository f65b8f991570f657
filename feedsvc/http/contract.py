"""What the OpenAPI spec says of bodies our handlers read themselves (Litestar cannot see them).

`POST /messages` reads its raw body (to answer invalid UTF-8, unknown fields and the rest
in our own words), so Litestar infers no request body; this operation class declares it:
https://docs.litestar.dev/2/usage/openapi/schema_generation.html (customizing `Operation`)
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from feedsvc.messages import AUTHOR_PATTERN, MAX_TEXT_CHARS


def _ecma(python_pattern: str) -> str:
    """A Python `\\A...\\Z` regex as JSON Schema writes it (ECMA-262: `$` ends the input)."""
    return "^" + python_pattern.removeprefix("\\A").removesuffix("\\Z") + "$"


SUBMISSION = Schema(
    type=OpenAPIType.OBJECT,
    properties={
        "author": Schema(type=OpenAPIType.STRING, pattern=_ecma(AUTHOR_PATTERN), max_length=32),
        "text": Schema(
            type=OpenAPIType.STRING,
            min_length=1,
            max_length=MAX_TEXT_CHARS,
            description=(
                f"1-{MAX_TEXT_CHARS} characters after trimming, at least one visible; "
                "no control characters but newline"
            ),
        ),
    },
    required=["author", "text"],
    additional_properties=False,
    examples=[{"author": "ada", "text": "hello, feed"}],
)
"""The body of `POST /messages` (`feedsvc.messages.Submission` and its checks)."""


@dataclass
class SubmitOperation(Operation):
    """The OpenAPI operation of `POST /messages`, with its JSON request body."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=SUBMISSION)},
            required=True,
            description="The message to post; at most 4 KiB.",
        )
