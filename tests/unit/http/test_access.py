"""The access log writes one line per request when it completes, with what happened."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar, Response, get, post
from litestar.response import Stream
from litestar.testing import AsyncTestClient

from feedsvc.http.access import AccessLog

MESSAGE_ID = "0b6f3c1e-3c5e-4b8e-9d4f-2a1b3c4d5e6f"


@post("/messages", status_code=202)
async def accept() -> Response[dict[str, str]]:
    return Response(
        {"id": MESSAGE_ID}, status_code=202, headers={"Location": f"/messages/{MESSAGE_ID}"}
    )


@get("/feed")
async def stream() -> Stream:
    async def events() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"data: {i}\n\n".encode()

    return Stream(events(), media_type="text/event-stream")


@get("/boom")
async def boom() -> None:
    raise RuntimeError("bug")


def app() -> Litestar:
    litestar = Litestar([accept, stream, boom], logging_config=None)
    litestar.asgi_handler = AccessLog(litestar.asgi_handler)
    return litestar


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    keys = ("method", "path", "status", "duration_ms", "message_id")
    return [
        {k: getattr(r, k) for k in keys if hasattr(r, k)}
        for r in caplog.records
        if r.name == "feedsvc.access"
    ]


async def test_accepted_post_logs_its_message_id(caplog: pytest.LogCaptureFixture) -> None:
    """A 202 is logged once with method, path, status, duration and the id from Location."""
    caplog.set_level(logging.INFO, "feedsvc.access")
    async with AsyncTestClient(app()) as client:
        assert (await client.post("/messages", content=b"{}")).status_code == 202
    [line] = lines(caplog)
    assert line.pop("duration_ms") >= 0
    assert line == {"method": "POST", "path": "/messages", "status": 202, "message_id": MESSAGE_ID}


async def test_a_stream_is_one_line_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    """A streamed response is logged once, after its last chunk, not per event."""
    caplog.set_level(logging.INFO, "feedsvc.access")
    async with AsyncTestClient(app()) as client:
        response = await client.get("/feed")
        assert response.text.count("data:") == 5
    assert [(x["path"], x["status"]) for x in lines(caplog)] == [("/feed", 200)]


async def test_unrouted_and_failed_requests_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """404 (no route), 405 (wrong method) and 500 (a handler's bug) each get their line."""
    caplog.set_level(logging.INFO, "feedsvc.access")
    async with AsyncTestClient(app()) as client:
        await client.get("/nowhere")
        await client.delete("/messages")
        await client.get("/boom")
    assert [(x["method"], x["path"], x["status"]) for x in lines(caplog)] == [
        ("GET", "/nowhere", 404),
        ("DELETE", "/messages", 405),
        ("GET", "/boom", 500),
    ]
    assert all("message_id" not in x for x in lines(caplog))


async def test_the_line_names_the_client(caplog: pytest.LogCaptureFixture) -> None:
    """The line's `client` is the request's client address (uvicorn's, after trusted XFF)."""
    caplog.set_level(logging.INFO, "feedsvc.access")
    async with AsyncTestClient(app()) as client:
        await client.post("/messages", content=b"{}")
    [record] = [r for r in caplog.records if r.name == "feedsvc.access"]
    assert record.__dict__["client"] == "testclient"  # TestClient's scope["client"]
