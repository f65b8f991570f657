"""The OpenAPI contract (`/schema/openapi.json`): what each operation takes and answers.

Litestar infers little of it: our handlers read raw bodies and answer pre-encoded bytes,
and errors come from our own handlers. So each operation names its responses here
(`ResponseSpec`s of the wire shapes in `feedsvc.messages`, so the component schemas are
generated from the very structs the api encodes), and an `Operation` class adds what a
`ResponseSpec` cannot say: response headers (`Retry-After`, `Location`), parameter
constraints and exact status sets.
https://docs.litestar.dev/2/usage/openapi/schema_generation.html (responses=,
operation_class=). `tests/e2e/test_schemathesis.py` holds the api to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
)

from feedsvc.http.patterns import ecma, text_pattern
from feedsvc.messages import (
    AUTHOR_PATTERN,
    CURSOR_PATTERN,
    MAX_BODY_BYTES,
    MAX_TEXT_CHARS,
    Accepted,
    Deleted,
    Message,
    MessagePage,
    Problem,
    ResetNotice,
    ResumeNotice,
)
from feedsvc.relay.frames import EVENT_ID_PATTERN

MAX_LIMIT = 1000
"""The most messages one page or one feed history holds."""
IDEMPOTENCY_KEY_PATTERN = r"\A[\x21-\x7e]{1,255}\Z"
"""Printable ASCII, as in the IETF Idempotency-Key draft's examples (UUIDs, tokens)."""


def submission_schema() -> Schema:
    """The body of `POST /messages` (`feedsvc.messages.Submission` and its checks)."""
    return Schema(
        type=OpenAPIType.OBJECT,
        properties={
            "author": Schema(
                type=OpenAPIType.STRING, pattern=ecma(AUTHOR_PATTERN), min_length=1, max_length=32
            ),
            "text": Schema(
                type=OpenAPIType.STRING,
                min_length=1,
                max_length=MAX_TEXT_CHARS,
                pattern=text_pattern(),
                description=(
                    f"1-{MAX_TEXT_CHARS} characters after trimming white space at both ends, "
                    "at least one of them visible (not a space, control, format character or "
                    "other default-ignorable code point); no control characters but newline."
                ),
            ),
        },
        required=["author", "text"],
        additional_properties=False,
        examples=[{"author": "ada", "text": "hello, feed"}],
    )


def _header(description: str, schema: Schema) -> OpenAPIHeader:
    return OpenAPIHeader(description=description, schema=schema, required=True)


RETRY_AFTER = _header(
    "Seconds to wait before trying again.", Schema(type=OpenAPIType.INTEGER, minimum=0)
)

# The IETF fields the front door adds (docs/fair-share.md#the-headers):
# https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/11/
RATE_LIMIT_POLICY = OpenAPIHeader(
    description=(
        "Set by the front door: the per-address quotas, e.g. "
        '`"posts";q=300;w=10, "inflight";q=32;qu="concurrent-requests"`.'
    ),
    schema=Schema(type=OpenAPIType.STRING),
    required=False,
)
RATE_LIMIT = OpenAPIHeader(
    description=(
        'Set by the front door: what this address has left, e.g. `"posts";r=287;t=10` '
        "(`r` requests within `t` seconds); `r=0` means wait `t` seconds."
    ),
    schema=Schema(type=OpenAPIType.STRING),
    required=False,
)
QUOTA = {"RateLimit-Policy": RATE_LIMIT_POLICY, "RateLimit": RATE_LIMIT}
"""Absent from the api's own answers: its limits are its capacity, not a client's quota."""


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(Problem, description=description, generate_examples=False)


# --- the feed's events, as an EventSource dispatches them (documentation shapes) ---


class MessageEvent(msgspec.Struct, frozen=True, tag="message", tag_field="event"):
    """`event: message`: a message, in feed order."""

    id: Annotated[str, msgspec.Meta(pattern=ecma(EVENT_ID_PATTERN))]
    data: Message


class DeleteEvent(msgspec.Struct, frozen=True, tag="delete", tag_field="event"):
    """`event: delete`: a message that no longer exists."""

    id: Annotated[str, msgspec.Meta(pattern=ecma(EVENT_ID_PATTERN))]
    data: Deleted


class ResetEvent(msgspec.Struct, frozen=True, tag="reset", tag_field="event"):
    """`event: reset`: the position cannot be served; history from scratch follows."""

    id: Annotated[str, msgspec.Meta(pattern=ecma(EVENT_ID_PATTERN))]
    data: ResetNotice


class ResumeEvent(msgspec.Struct, frozen=True, tag="resume", tag_field="event"):
    """`event: resume`: the last event; reconnect with `Last-Event-ID` to continue."""

    id: Annotated[str, msgspec.Meta(pattern=ecma(EVENT_ID_PATTERN))]
    data: ResumeNotice


FeedEvent = MessageEvent | DeleteEvent | ResetEvent | ResumeEvent
"""One event of `GET /feed`, `data:` decoded from its JSON."""

FEED_DESCRIPTION = f"""\
A Server-Sent Events stream (`text/event-stream`), endless: `retry: 2000` first, then the
latest `limit` messages oldest first, then every new message live. Each event has an
`id:` (`<offset>[-<tag>][~<snapshot>]`, pattern `{ecma(EVENT_ID_PATTERN)}`, opaque: send
the last one back as `Last-Event-ID`), an `event:` and one `data:` line of JSON; the
schema describes one event with `data` decoded:

- `message`: a message (`Message`);
- `delete`: `{{"id"}}` of a message that no longer exists;
- `reset`: `{{"reason"}}`: the position cannot be served (unknown, older than the feed's
  retention, topic recreated, changefeed restarted with a gap); history from scratch follows;
- `resume`: `{{"last_event_id", "reason"}}`, the last event of a stream the server ends
  (the client fell behind, or the api is shutting down): reconnect with it.

A comment `: ping` keeps an idle stream open. A process that cannot take the stream now
(full, starting, stopping), or the front door when this address already holds its share
of streams (then with `Retry-After`), answers 200 with `retry: 10000` and a comment, then ends:
never 429/503, on which a browser's EventSource would give up for good. Only a malformed
query (a `limit` outside 0-{MAX_LIMIT} or not a number) gets 400: a URL that can never
work should fail, not be retried forever."""


# --- operations ---


def _set_parameter(operation: Operation, name: str, schema: Schema, description: str) -> None:
    for parameter in operation.parameters or []:
        if isinstance(parameter, Parameter) and parameter.name == name:
            parameter.schema = schema
            parameter.description = description
            return
    raise LookupError(f"{operation.operation_id} has no parameter {name!r}")


def _operation(
    name: str,
    statuses: Iterable[int],
    headers: Mapping[int, Mapping[str, OpenAPIHeader]] | None = None,
    amend: Callable[[Operation], None] | None = None,
) -> type[Operation]:
    """An `Operation` class that answers exactly `statuses`, with these response headers."""
    keep = {str(status) for status in statuses}

    @dataclass
    class Documented(Operation):
        def __post_init__(self) -> None:
            responses = self.responses or {}
            missing = keep - set(responses)
            if missing:
                raise LookupError(f"{name}: no response documented for {sorted(missing)}")
            self.responses = {code: r for code, r in sorted(responses.items()) if code in keep}
            for status, named in (headers or {}).items():
                response = self.responses[str(status)]
                assert isinstance(response, OpenAPIResponse)
                response.headers = {**(response.headers or {}), **named}
            if amend is not None:
                amend(self)

    Documented.__name__ = Documented.__qualname__ = name
    return Documented


def _submit_body(operation: Operation) -> None:
    operation.request_body = RequestBody(
        content={"application/json": OpenAPIMediaType(schema=submission_schema())},
        required=True,
        description=f"The message to post; at most {MAX_BODY_BYTES} bytes.",
    )
    operation.parameters = [
        Parameter(
            name="Idempotency-Key",
            param_in="header",
            required=False,
            description=(
                "Makes retries safe: the same author and key always get the same id, "
                "stored once; the key again with another text gets 422."
            ),
            schema=Schema(
                type=OpenAPIType.STRING, pattern=ecma(IDEMPOTENCY_KEY_PATTERN), max_length=255
            ),
        )
    ]


SubmitOperation = _operation(
    "SubmitOperation",
    (202, 400, 413, 415, 422, 429, 503),
    headers={
        202: {
            "Location": _header(
                "Where the message will be once stored: `/messages/<id>`.",
                Schema(type=OpenAPIType.STRING, pattern=ecma(r"\A/messages/[0-9a-f-]{36}\Z")),
            ),
            **QUOTA,
        },
        429: {"Retry-After": RETRY_AFTER, **QUOTA},
        503: {"Retry-After": RETRY_AFTER},
    },
    amend=_submit_body,
)
"""`POST /messages`."""

SUBMIT_RESPONSES = {
    202: ResponseSpec(
        Accepted, description="Kafka has the message; it will be stored.", generate_examples=False
    ),
    400: _problem("The body or a header breaks a rule; `detail` says which, `field` names it."),
    413: _problem(f"The body is over {MAX_BODY_BYTES} bytes."),
    415: _problem("The body is not `application/json`."),
    422: _problem("The `Idempotency-Key` was already used by this author for another text."),
    429: _problem(
        "Too many posts from this address (the front door, with `RateLimit`), or too many "
        "in flight, or the writer is too far behind: come back after `Retry-After`."
    ),
    503: _problem(
        "Kafka did not acknowledge the message in time (not known to be accepted), or the "
        "`Idempotency-Key` cannot be checked now (the database is unreachable)."
    ),
}


def _page_parameters(operation: Operation) -> None:
    _set_parameter(
        operation,
        "before",
        Schema(type=OpenAPIType.STRING, pattern=ecma(CURSOR_PATTERN)),
        "The `next` of the previous page; absent: the newest page.",
    )


ListOperation = _operation("ListOperation", (200, 400), amend=_page_parameters)
"""`GET /messages`."""

LIST_RESPONSES = {
    200: ResponseSpec(
        MessagePage,
        description="Newest first; `next` is the cursor of the next page, null at the end.",
        generate_examples=False,
    ),
    400: _problem("`limit` or `before` is malformed; `field` names it."),
}

GetOperation = _operation("GetOperation", (200, 404))
"""`GET /messages/{message_id}`."""

GET_RESPONSES = {
    200: ResponseSpec(Message, description="The stored message.", generate_examples=False),
    404: _problem("No such message stored (also while accepted but not stored yet)."),
}


def _feed_parameters(operation: Operation) -> None:
    _set_parameter(
        operation,
        "limit",
        Schema(type=OpenAPIType.INTEGER, minimum=0, maximum=MAX_LIMIT),
        "How many messages of history before going live; absent: `FEED_HISTORY_LIMIT` (50).",
    )
    _set_parameter(
        operation,
        "last_event_id",
        Schema(type=OpenAPIType.STRING),
        "Resume after this event id, for clients that cannot send the `Last-Event-ID` "
        "header (the header wins). An id that is not one of ours gets `reset`.",
    )


FeedOperation = _operation("FeedOperation", (200, 400), amend=_feed_parameters)
"""`GET /feed`."""

FEED_RESPONSES = {
    200: ResponseSpec(
        FeedEvent,
        description=FEED_DESCRIPTION,
        media_type="text/event-stream",
        generate_examples=False,
    ),
    400: _problem(f"`limit` is not a number from 0 to {MAX_LIMIT}."),
}


class Readiness(msgspec.Struct, frozen=True):
    """The body of `/health/ready`: each dependency's state and the verdict."""

    database: str
    kafka: str
    feed: str
    status: Literal["ready", "degraded", "not ready"]


ReadyOperation = _operation("ReadyOperation", (200, 503))
"""`GET /health/ready`."""

READY_RESPONSES = {
    200: ResponseSpec(
        Readiness,
        description="Posts and the feed can be served: Kafka and the feed ok. `degraded` "
        "when the database is unreachable (reads and keyed posts fail; posts and the live "
        "feed go on).",
        generate_examples=False,
    ),
    503: ResponseSpec(
        Readiness,
        description="Kafka unavailable or the feed catching up; it says what.",
        generate_examples=False,
    ),
}

API_DESCRIPTION = """\
Post short messages; read them back page by page; follow them live over Server-Sent Events.

Every error is JSON `{"error", "detail", "field"?, "request_id"}` (`Problem`); every answer
carries `X-Request-ID`. Every GET path also answers HEAD (the same headers, no body); OPTIONS
lists every method of a path in `Allow`, and a method a path does not have gets 405 with
`Allow`."""


def openapi_config(render_plugins: list[OpenAPIRenderPlugin]) -> OpenAPIConfig:
    """The spec's metadata, at `/schema` (the UI) and `/schema/openapi.json`."""
    return OpenAPIConfig(
        title="feedsvc",
        version="1.0.0",
        description=API_DESCRIPTION,
        path="/schema",
        render_plugins=render_plugins,
        create_examples=False,
    )
