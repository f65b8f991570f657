"""The benchmark's baseline: a bare Litestar handler that validates a POST body, nothing else.

Served by uvicorn on uvloop with the api's options, so `bench.ingest` can set the
api's rate beside what the framework alone reaches on the same machine in the same run.
Usage: python -m bench.baseline_ingest PORT
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import uvicorn
from litestar import Litestar, Request, Response, get, post

from feedsvc.messages import MAX_BODY_BYTES, InvalidSubmission, decode_submission


@post("/messages", request_max_body_size=MAX_BODY_BYTES, status_code=202)
async def messages(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Validate the body as the api does; 202 without producing anything."""
    try:
        decode_submission(await request.body())
    except InvalidSubmission as exc:
        return Response(exc.detail.encode(), status_code=400)
    return Response(b'{"status":"accepted"}', status_code=202, media_type="application/json")


@get("/health")
async def health() -> str:
    """Ready as soon as it listens."""
    return "ok"


def main(port: int) -> None:
    """Serve until SIGTERM."""
    app = Litestar([messages, health], openapi_config=None)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
    )
    anyio.run(uvicorn.Server(config).serve, backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main(int(sys.argv[1]))
