"""What people open in a browser: the page at `/`, its static files, the favicon, `/schema`.

Every asset is served by the api itself, so the page and the OpenAPI UI work offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from litestar import Router, get
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.response import File, Response
from litestar.static_files import create_static_files_router

STATIC = Path(__file__).parent / "static"
"""The page's scripts and the favicon (shipped in the wheel with the package)."""

FAVICON_LINK = '<link rel="icon" type="image/svg+xml" href="/static/favicon.svg">'
SWAGGER_UI_PATH = "/static/swagger-ui"

_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>feedsvc</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
{FAVICON_LINK}
<link rel="stylesheet" href="/static/page.css"></head><body>
<h1>feedsvc</h1>
<form id="post"><input id="author" placeholder="author" maxlength="32" required>
<input id="text" placeholder="what's happening?" maxlength="280" required>
<button>Post</button></form>
<div id="notice" role="status"></div>
<div>feed: <span id="state" data-state="connecting">connecting…</span></div>
<ul id="feed" data-repeats="0"></ul>
<p><a href="/schema">API documentation</a></p>
<script src="/static/feed-hub.js"></script>
<script src="/static/page.js"></script>
</body></html>
"""


@get("/", include_in_schema=False)
async def index() -> Response[str]:
    """The demo page: the live feed and a post form."""
    return Response(_PAGE, media_type="text/html")


@get("/favicon.ico", include_in_schema=False)
async def favicon() -> File:
    """The icon browsers ask for on their own, on pages that name none."""
    return File(
        STATIC / "favicon.svg", media_type="image/svg+xml", content_disposition_type="inline"
    )


def swagger_ui_dir() -> Path:
    """Swagger UI's files as the `swagger-ui-py` package ships them (Apache-2.0).

    Note: found without importing the package, whose Python side (jinja2 templates for
    other frameworks) we do not use.
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def static_routers() -> list[Router]:
    """Our own assets under `/static`, Swagger UI's under `/static/swagger-ui`."""
    return [
        create_static_files_router(SWAGGER_UI_PATH, [swagger_ui_dir()], name="swagger-ui"),
        create_static_files_router("/static", [STATIC], name="static"),
    ]


def schema_ui() -> SwaggerRenderPlugin:
    """Swagger UI ("Try it out") at `/schema`, its JS and CSS from this api, not a CDN.

    https://docs.litestar.dev/2/usage/openapi/ui_plugins.html (js_url, css_url, favicon)
    """
    return SwaggerRenderPlugin(
        path="/",
        js_url=f"{SWAGGER_UI_PATH}/swagger-ui-bundle.js",
        css_url=f"{SWAGGER_UI_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{SWAGGER_UI_PATH}/swagger-ui-standalone-preset.js",
        favicon=FAVICON_LINK,
    )
