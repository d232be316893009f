"""The request-body limit (413), as an ASGI layer that counts bytes as a route reads them.

Checked when a route reads its body, so routes that take no body pay nothing, and a body that
declares more than the limit in ``Content-Length`` is refused before a byte of it is read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serve.errors import ApiError


class BodyLimit:
    """Refuse request bodies over ``max_body_bytes()`` with 413 ``body_too_large``."""

    def __init__(self, app: Any, *, max_body_bytes: Callable[[], int]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes()
        declared = content_length(scope)
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            if declared is not None and declared > limit:
                raise ApiError(413, "body_too_large", f"request body of {declared} bytes exceeds {limit}")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, "body_too_large", f"request body exceeds {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
