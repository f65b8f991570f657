"""`GET /messages` (keyset pages, newest first) and `GET /messages/{id}`."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from feedsvc.http import contract
from feedsvc.http.errors import problem
from feedsvc.messages import Cursor, MessagePage, decode_cursor, encode, encode_cursor
from feedsvc.store import MessageStore


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
