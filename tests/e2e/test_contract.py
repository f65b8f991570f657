"""The HTTP contract over real HTTP: methods (HEAD, OPTIONS, 405 and `Allow`) and `/feed`,
which schemathesis leaves out (tests/e2e/test_schemathesis.py says why)."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import anyio
import httpx
import jsonschema_rs
import pytest

from devstack import Stack
from tests.support import SseReader, extra_api, post_many

# GET routes the spec leaves out (the page, its files, the UI) answer HEAD all the same.
UNDOCUMENTED_GETS = ["/", "/favicon.ico", "/static/page.css", "/schema", "/schema/openapi.json"]
OTHER_METHODS = ["PUT", "DELETE", "PATCH", "TRACE"]


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    return cast(dict[str, Any], response.json())


def concrete(path: str) -> str:
    return path.replace("{message_id}", "00000000-0000-0000-0000-000000000000")


def documented_allow(spec: dict[str, Any], path: str) -> str:
    methods = {method.upper() for method in spec["paths"][path]} | {"OPTIONS"}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def event_validator(spec: dict[str, Any]) -> Any:
    schema = spec["paths"]["/feed"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    return jsonschema_rs.validator_for(
        {**schema["schema"], "components": spec["components"]}, validate_formats=True
    )


async def test_head_answers_every_get_route_without_a_body(
    client: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    """HEAD gets GET's status and content type, and no body, on every GET route."""
    documented = [p for p, item in spec["paths"].items() if "get" in item and p != "/feed"]
    for path in [*map(concrete, documented), *UNDOCUMENTED_GETS]:
        get = await client.get(path)
        head = await client.head(path)
        assert head.status_code == get.status_code, path
        assert head.headers["content-type"] == get.headers["content-type"], path
        assert head.content == b"", path


async def test_head_of_the_feed_ends_at_once_and_holds_no_stream(stack: Stack) -> None:
    """HEAD /feed answers the stream's headers and ends; it takes no subscriber's place."""
    with extra_api(stack, FEED_MAX_SUBSCRIBERS="1") as replica:
        async with httpx.AsyncClient(base_url=replica, timeout=30) as http:
            for _ in range(3):
                started = time.monotonic()
                head = await http.head("/feed")
                assert head.status_code == 200
                assert head.headers["content-type"].startswith("text/event-stream")
                assert head.content == b""
                assert time.monotonic() - started < 5
            # The one place is free: a GET gets the real stream (`retry: 2000`), not the
            # busy answer (`retry: 10000`, then the end).
            async with http.stream("GET", "/feed", params={"limit": 0}) as response:
                sse = SseReader(response)
                with anyio.fail_after(20):
                    while sse.retry_ms is None:
                        assert await sse.next(20) is not None
                assert sse.retry_ms == 2000


async def test_options_lists_every_method_of_each_path(
    client: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    """OPTIONS answers 204 with every method the path has (HEAD with GET, OPTIONS itself)."""
    for path in spec["paths"]:
        response = await client.options(concrete(path))
        assert response.status_code == 204, path
        assert response.headers["allow"] == documented_allow(spec, path), path
    assert (await client.options("/messages")).headers["allow"] == "GET, HEAD, OPTIONS, POST"


async def test_other_methods_get_405_with_allow(
    client: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    """A method a path does not have gets 405, the `Allow` of OPTIONS, and our error body."""
    for path in spec["paths"]:
        for method in OTHER_METHODS:
            response = await client.request(method, concrete(path))
            assert response.status_code == 405, (method, path)
            assert response.headers["allow"] == documented_allow(spec, path), (method, path)
            assert response.json()["error"] == "method_not_allowed"
    post_to_a_get_route = await client.post("/health/live")
    assert post_to_a_get_route.status_code == 405
    assert post_to_a_get_route.headers["allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize("limit", ["-1", "1001", "abc", ""])
async def test_a_malformed_feed_query_gets_400_in_the_documented_shape(
    client: httpx.AsyncClient, spec: dict[str, Any], limit: str
) -> None:
    """`/feed?limit=-1` is refused with 400 before any stream: the URL can never work.

    The one error `/feed` answers; load never gets one (test_feed.py: 200 and `retry:`).
    """
    # Streamed, so that a 200 (an endless stream) fails at once instead of hanging.
    async with client.stream("GET", "/feed", params={"limit": limit}) as streamed:
        assert streamed.status_code == 400
        await streamed.aread()
        response = streamed
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["field"] == "limit"
    documented = spec["paths"]["/feed"]["get"]["responses"]["400"]["content"]["application/json"]
    check = jsonschema_rs.validator_for({**documented["schema"], "components": spec["components"]})
    assert check.is_valid(response.json())


async def test_feed_events_are_the_documented_events(
    client: httpx.AsyncClient, stack: Stack, spec: dict[str, Any], author: str
) -> None:
    """History, live and reset events, parsed as an EventSource does, match the spec."""
    check = event_validator(spec)
    seen: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http,
        http.stream(
            "GET", "/feed", params={"limit": 1}, headers={"Last-Event-ID": "not-ours"}
        ) as response,
    ):
        assert response.status_code == 200
        sse = SseReader(response)
        [reset] = await sse.messages(1)
        assert reset.event == "reset"
        seen.append({"event": reset.event, "id": reset.id, "data": reset.json()})
        [posted] = await post_many(client, author, 1, "contract")
        with anyio.fail_after(30):
            while True:
                [event] = await sse.messages(1)
                seen.append({"event": event.event, "id": event.id, "data": event.json()})
                if event.event == "message" and event.json()["id"] == posted:
                    break
    for parsed in seen:
        assert check.is_valid(parsed), json.dumps(parsed)
    assert {"reset", "message"} <= {parsed["event"] for parsed in seen}
