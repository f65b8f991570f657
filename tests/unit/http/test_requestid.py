"""Request ids: taken or made, returned, in the access log line and in every error body."""

from __future__ import annotations

import logging
import re

import pytest
from litestar import Litestar, get
from litestar.exceptions import NotFoundException
from litestar.testing import AsyncTestClient

from feedsvc.http.access import AccessLog
from feedsvc.http.errors import exception_handlers
from feedsvc.http.requestid import RequestIds


@get("/ok")
async def ok() -> dict[str, str]:
    return {"status": "fine"}


@get("/missing")
async def missing() -> None:
    raise NotFoundException("no such thing")


def app() -> Litestar:
    litestar = Litestar([ok, missing], exception_handlers=exception_handlers(), logging_config=None)
    litestar.asgi_handler = RequestIds(AccessLog(litestar.asgi_handler))
    return litestar


async def test_a_given_request_id_is_returned() -> None:
    """A valid X-Request-ID from the client comes back unchanged."""
    async with AsyncTestClient(app()) as client:
        answer = await client.get("/ok", headers={"X-Request-ID": "lb-7f3a:42"})
    assert answer.headers["x-request-id"] == "lb-7f3a:42"


@pytest.mark.parametrize("given", [None, "has space", "x" * 129, "new\nline"])
async def test_an_absent_or_invalid_request_id_is_replaced_by_a_new_one(given: str | None) -> None:
    """Without a usable X-Request-ID the answer carries a new random one."""
    headers = {} if given is None else {"X-Request-ID": given}
    async with AsyncTestClient(app()) as client:
        first = await client.get("/ok", headers=headers)
        second = await client.get("/ok", headers=headers)
    assert re.fullmatch("[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_an_error_body_carries_the_request_id() -> None:
    """A 404's JSON body names the request's id, and its length is still right."""
    async with AsyncTestClient(app()) as client:
        answer = await client.get("/missing", headers={"X-Request-ID": "abc-1"})
        success = await client.get("/ok", headers={"X-Request-ID": "abc-2"})
    assert answer.status_code == 404
    assert answer.json() == {"error": "not_found", "detail": "no such thing", "request_id": "abc-1"}
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert success.json() == {"status": "fine"}


async def test_the_access_log_line_carries_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The request's one access log line has its `request_id`."""
    caplog.set_level(logging.INFO, logger="feedsvc.access")
    async with AsyncTestClient(app()) as client:
        await client.get("/ok", headers={"X-Request-ID": "joined-1"})
    (line,) = [r for r in caplog.records if r.name == "feedsvc.access"]
    assert getattr(line, "request_id", None) == "joined-1"
