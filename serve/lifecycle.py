"""Every request's deadline (504) and the client who left (499), in one ASGI layer.

Routes stay plain ``async def``s: this layer runs each request as a task and cancels it when
the deadline passes or when the client disconnects after sending its body, so a client that
gives up (its own timeout, a closed page) frees its queued images instead of delaying everyone
behind them. Neither Starlette nor uvicorn cancels a handler whose client left: once the body
has been read, this layer watches ``receive()`` for ``http.disconnect`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from serve.errors import ApiError, error_body

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestLifecycle:
    """Cancel a request's handler at its deadline or when its client disconnects."""

    def __init__(self, app: Any, *, timeout_s: Callable[[], float]) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        body_done = asyncio.Event()
        left: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        async def watched_receive() -> Message:
            if body_done.is_set():  # after the body, the only message left is the disconnect
                return await asyncio.shield(left)
            message = await receive()
            if message["type"] == "http.disconnect":
                left.set_result(message)
            elif not message.get("more_body", False):
                body_done.set()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def watch() -> None:
            await body_done.wait()
            message = await receive()
            while message["type"] != "http.disconnect":
                message = await receive()
            if not left.done():
                left.set_result(message)

        handler = asyncio.ensure_future(self.app(scope, watched_receive, tracking_send))
        watcher = asyncio.ensure_future(watch())
        try:
            done, _ = await asyncio.wait(
                {handler, watcher}, timeout=self.timeout_s(), return_when="FIRST_COMPLETED"
            )
        finally:
            watcher.cancel()
        if handler in done:
            handler.result()  # re-raise what the app raised (its own error layer answered it)
            return
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handler
        if started:  # too late for a status: the client sees a cut response
            return
        if done:  # the watcher finished: the client is gone; answer to nobody, counted as 499
            error = ApiError(
                499, "client_closed_request", "the client disconnected before the answer was ready"
            )
        else:
            error = ApiError(504, "timeout", f"request took longer than {self.timeout_s()}s")
        await error_body(scope["path"], error)(scope, watched_receive, send)
