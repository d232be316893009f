"""Every failure a client can cause, mapped to one JSON shape and the right status, in one place.

Routes raise :class:`ApiError` (or let domain errors such as :class:`ImageError` propagate);
:func:`install_error_handlers` turns them into ``{"error": {"code": ..., "message": ...}}``.
Open Inference Protocol routes (``/v2/...``) answer ``{"error": "message"}`` instead, the shape
that protocol prescribes and that tritonclient parses.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serve.batcher import OverloadedError
from serve.preprocess import ImageError, ImageTooLargeError, UnsupportedImageError

log = logging.getLogger("serve.errors")

RETRY_AFTER_S = "1"
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An HTTP error with a stable machine-readable ``code`` and a human ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def not_ready(message: str = "model is loading") -> ApiError:
    return ApiError(503, "not_ready", message, {"Retry-After": RETRY_AFTER_S})


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body", "path"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def to_api_error(exc: Exception) -> ApiError:
    """Any exception -> the :class:`ApiError` a client sees (500 only for our own bugs)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnsupportedImageError):
        return ApiError(415, "unsupported_image_format", str(exc))
    if isinstance(exc, ImageTooLargeError):
        return ApiError(413, "image_too_large", str(exc))
    if isinstance(exc, ImageError):
        return ApiError(400, "invalid_image", str(exc))
    if isinstance(exc, OverloadedError):
        return ApiError(503, "overloaded", f"server is busy ({exc}); retry", {"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, RequestValidationError):
        return ApiError(422, "invalid_parameter", _describe_validation(exc))
    if isinstance(exc, HTTPException):
        code = STATUS_CODES.get(exc.status_code, "error")
        return ApiError(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))
    log.error("unhandled error", exc_info=exc)
    return ApiError(500, "internal", f"internal error ({type(exc).__name__})")


def error_body(path: str, error: ApiError) -> JSONResponse:
    """The error's JSON answer in the shape of the route's protocol (v1 or OIP v2)."""
    body: dict[str, Any]
    if path.startswith("/v2"):
        body = {"error": error.message}
    else:
        body = {"error": {"code": error.code, "message": error.message}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def error_response(request: Request, exc: Exception) -> JSONResponse:
    return error_body(request.url.path, to_api_error(exc))


def install_error_handlers(app: FastAPI) -> None:
    """One handler for every error type a route can raise."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, exc)

    for kind in (ApiError, ImageError, OverloadedError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(kind, handler)
