"""CORS: allowed origins get the headers a browser needs; others get none."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import httpx
import pytest
from litestar.testing import AsyncTestClient

from feedsvc.config import Settings
from feedsvc.http.app import ApiParts, create_app
from feedsvc.metrics import Metrics

# Building the whole app warns of Litestar 2.25 deprecations in handlers other work on
# issue 9 is rewriting (inferred dependencies, `Parameter(query=)`); not this test's subject.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ALLOWED = "https://app.example"
OTHER = "https://evil.example"


def app(cors_origins: str) -> Any:
    # The routes asked here use none of the collaborators.
    used = ("settings", "metrics")
    unused = {f.name: cast(Any, None) for f in dataclasses.fields(ApiParts) if f.name not in used}
    return create_app(
        ApiParts(settings=Settings(cors_origins=cors_origins), metrics=Metrics(), **unused)
    )


async def preflight(client: AsyncTestClient[Any], origin: str) -> httpx.Response:
    return await client.options(
        "/messages",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
        },
    )


async def test_preflight_from_an_allowed_origin() -> None:
    """OPTIONS with Origin and Access-Control-Request-Method is allowed for a listed origin."""
    async with AsyncTestClient(app(f"{ALLOWED}, https://other.example")) as client:
        response = await preflight(client, ALLOWED)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "idempotency-key" in response.headers["access-control-allow-headers"].lower()


async def test_preflight_from_another_origin_is_refused() -> None:
    """A preflight from an origin not listed gets no allow-origin, so the browser stops."""
    async with AsyncTestClient(app(ALLOWED)) as client:
        response = await preflight(client, OTHER)
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_simple_request_headers_follow_the_origin() -> None:
    """A plain GET from a listed origin gets allow-origin; from another origin it gets none."""
    async with AsyncTestClient(app(ALLOWED)) as client:
        allowed = await client.get("/", headers={"Origin": ALLOWED})
        other = await client.get("/", headers={"Origin": OTHER})
    assert allowed.status_code == other.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "access-control-allow-origin" not in other.headers


async def test_errors_carry_cors_headers_and_expose_retry_after() -> None:
    """A front end can read an error answer and its Retry-After and Location headers."""
    async with AsyncTestClient(app(ALLOWED)) as client:
        response = await client.get("/messages/not-a-uuid/nowhere", headers={"Origin": ALLOWED})
    assert response.status_code == 404
    assert response.headers["access-control-allow-origin"] == ALLOWED
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "retry-after" in exposed and "location" in exposed


async def test_no_cors_headers_by_default() -> None:
    """With FEED_CORS_ORIGINS empty no response carries CORS headers, not even a preflight's."""
    async with AsyncTestClient(app("")) as client:
        simple = await client.get("/", headers={"Origin": ALLOWED})
        pre = await preflight(client, ALLOWED)
    assert not [h for h in simple.headers if h.startswith("access-control-")]
    assert not [h for h in pre.headers if h.startswith("access-control-")]
