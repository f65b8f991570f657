"""One error body for every failure: `{"error", "detail", "field"?}`, built in one place.

`Answer.problem` builds an error's body and headers; `problem` is the same as a Litestar
response, and `http.door` writes an `Answer` without the framework.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, MethodNotAllowedException, ValidationException
from litestar.types import ExceptionHandlersMap

from feedsvc.http.methods import allow_header
from feedsvc.messages import Problem, encode

log = logging.getLogger(__name__)

_NAMES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_content",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    500: "internal_error",
    503: "unavailable",
}


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON answer, whichever layer writes it: its status, body and extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def problem(
        cls,
        status: int,
        detail: str,
        field: str | None = None,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """An error answer (`Problem`), with `Retry-After` when the client should come back."""
        extra = dict(headers or {})
        if retry_after_s is not None:
            extra["Retry-After"] = str(retry_after_s)
        return cls(status, problem_body(status, detail, field), tuple(extra.items()))

    def response(self) -> Response[bytes]:
        """As a Litestar response."""
        return Response(
            self.body,
            status_code=self.status,
            media_type="application/json",
            headers=dict(self.headers),
        )


def problem(
    status: int,
    detail: str,
    field: str | None = None,
    retry_after_s: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """An error response (`Answer.problem`, as a Litestar response)."""
    return Answer.problem(status, detail, field, retry_after_s, headers).response()


def problem_body(status: int, detail: str, field: str | None = None) -> bytes:
    """The JSON body of an error response (`Problem`)."""
    return encode(Problem(error=_NAMES.get(status, "error"), detail=detail, field=field))


def http_exception_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (bad query parameters, oversized bodies) in our shape.

    Note: a 405 keeps the `Allow` header Litestar's router computed (RFC 9110 §15.5.6
    requires it), with HEAD added where GET is (`feedsvc.http.methods`).
    """
    if isinstance(exc, MethodNotAllowedException):
        allow = (exc.headers or {}).get("allow", "")
        return problem(405, exc.detail, headers={"Allow": allow_header(allow.split(","))})
    field = None
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        first = exc.extra[0]
        if isinstance(first, dict):
            field = first.get("key")
            detail = f"{field}: {first.get('message', exc.detail)}" if field else exc.detail
            return problem(exc.status_code, detail, field)
    return problem(exc.status_code, exc.detail, field)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Anything unforeseen: logged with its traceback, answered 500 in our shape.

    Note: input must never get here (bad input is a 4xx, each named by its handler);
    this only keeps the error body's shape the same when a bug does.
    """
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={"method": request.method, "path": request.url.path},
    )
    return problem(500, "internal error; it has been logged")


def exception_handlers() -> ExceptionHandlersMap:
    """The app's handlers: Litestar's own errors, and (a bug) anything else, in our shape."""
    return {HTTPException: http_exception_handler, Exception: internal_error_handler}
