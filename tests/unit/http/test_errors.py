"""Every error the api answers has one JSON shape, even one caused by a bug."""

from __future__ import annotations

from typing import Annotated

from litestar import Litestar, get
from litestar.params import Parameter
from litestar.testing import TestClient

from feedsvc.http.errors import exception_handlers


@get("/boom")
async def boom() -> None:
    raise RuntimeError("a bug")


@get("/numbers")
async def numbers(limit: Annotated[int, Parameter(ge=1, le=10)] = 1) -> int:
    return limit


def app() -> Litestar:
    return Litestar([boom, numbers], exception_handlers=exception_handlers(), logging_config=None)


def test_unexpected_error_is_a_json_problem() -> None:
    """A handler raising something unforeseen answers 500 with {"error", "detail"}."""
    with TestClient(app()) as client:
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"error": "internal_error", "detail": "internal error; it has been logged"}


def test_framework_errors_keep_the_shape() -> None:
    """Litestar's own refusals (a bad query parameter, an unknown path) use the same shape."""
    with TestClient(app()) as client:
        bad = client.get("/numbers", params={"limit": "x"})
        missing = client.get("/nowhere")
    assert bad.status_code == 400
    assert bad.json()["field"] == "limit"
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
