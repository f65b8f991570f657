"""`GET /messages` (keyset pages, newest first) and `GET /messages/{id}`."""

from __future__ import annotations

import base64
import uuid
from typing import Annotated

import msgspec
from litestar import Response, get
from litestar.params import Parameter

from feedsvc.http.errors import problem
from feedsvc.messages import MessagePage, encode
from feedsvc.store import Cursor, MessageStore


def encode_cursor(cursor: Cursor) -> str:
    """An opaque, URL-safe token for `before`."""
    return base64.urlsafe_b64encode(encode(cursor)).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """The position a `before` token names; raises ValueError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return msgspec.json.decode(raw, type=Cursor)
    # binascii.Error, and the ValueError of a token with non-ASCII characters, are both
    # ValueErrors: whatever the client sent, it gets our message, not Python's.
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError("before is not a cursor this api issued") from exc


@get("/messages")
async def list_messages(
    store: MessageStore,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 50,
    before: str | None = None,
) -> Response[bytes]:
    """A page of messages, newest first; `next` fetches the page after it (null at the end).

    Note: the walk is keyed on (created_at, id), not on an offset, so messages
    posted meanwhile neither shift nor repeat it.
    """
    try:
        cursor = decode_cursor(before) if before else None
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


@get("/messages/{message_id:str}")
async def get_message(store: MessageStore, message_id: str) -> Response[bytes]:
    """One stored message, or 404 (also while it is accepted but not stored yet)."""
    try:
        parsed = uuid.UUID(message_id)
    except ValueError:
        return problem(404, f"no message {message_id!r}: not a message id", "id")
    message = await store.get(parsed)
    if message is None:
        return problem(404, f"no message {message_id}")
    return Response(encode(message), media_type="application/json")
