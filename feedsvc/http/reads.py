"""`GET /messages` (keyset pages, newest first) and `GET /messages/{id}`."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from feedsvc.http import contract
from feedsvc.http.errors import problem
from feedsvc.messages import MessagePage, encode
from feedsvc.store import Cursor, MessageStore

_CURSOR = re.compile(contract.CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(cursor: Cursor) -> str:
    """The `before` token of a position: `<created_at in µs since 1970>_<id in hex>`."""
    return f"{(cursor.created_at - _EPOCH) // _MICROSECOND}_{cursor.id.hex}"


def decode_cursor(token: str) -> Cursor:
    """The position a `before` token names; raises ValueError if it is not one.

    Note: every token of the documented form is a position (the spec's pattern says
    exactly which strings are), so a client may also make one: `0_<32 zeros>` is before
    everything, an empty page.
    """
    if not _CURSOR.match(token):
        raise ValueError(
            "before must be a cursor: the `next` of a page (<microseconds>_<32 hex digits>)"
        )
    micros, _, hex_id = token.partition("_")
    return Cursor(created_at=_EPOCH + int(micros) * _MICROSECOND, id=uuid.UUID(hex=hex_id))


@get(
    "/messages",
    responses=contract.LIST_RESPONSES,
    operation_class=contract.ListOperation,
)
async def list_messages(
    store: NamedDependency[MessageStore],
    limit: Annotated[int, QueryParameter(ge=1, le=contract.MAX_LIMIT)] = 50,
    before: FromQuery[str | None] = None,
) -> Response[bytes]:
    """A page of messages, newest first; `next` fetches the page after it (null at the end).

    Note: the walk is keyed on (created_at, id), not on an offset, so messages
    posted meanwhile neither shift nor repeat it.
    """
    try:
        cursor = None if before is None else decode_cursor(before)
    except ValueError as exc:
        return problem(400, str(exc), "before")
    items = await store.page(limit, cursor)
    next_token = None
    if len(items) == limit:
        last = items[-1]
        next_token = encode_cursor(Cursor(created_at=last.created_at, id=last.id))
    return Response(
        encode(MessagePage(items=items, next=next_token)), media_type="application/json"
    )


@get(
    "/messages/{message_id:str}",
    responses=contract.GET_RESPONSES,
    operation_class=contract.GetOperation,
)
async def get_message(
    store: NamedDependency[MessageStore], message_id: FromPath[str]
) -> Response[bytes]:
    """One stored message, or 404 (also while it is accepted but not stored yet)."""
    try:
        parsed = uuid.UUID(message_id)
    except ValueError:
        return problem(404, f"no message {message_id!r}: not a message id", "id")
    message = await store.get(parsed)
    if message is None:
        return problem(404, f"no message {message_id}")
    return Response(encode(message), media_type="application/json")
