"""Every request's deadline (504) and the client who left (499), in one ASGI layer.

Routes stay plain ``async def``s: this layer cancels the request's own task when the deadline
passes or when the client disconnects after sending its body, so a client that gives up (its
own timeout, a closed page) frees its queued images instead of delaying everyone behind them.
Neither Starlette nor uvicorn cancels a handler whose client left: once the body has been
read, a watcher reads ``receive()`` for ``http.disconnect`` itself. As ``asyncio.timeout``
does, the layer cancels the running task and takes the cancellation back
(``Task.uncancel``): no extra task per request, and one watcher only for requests with a body.
"""

from __future__ import annotations

import asyncio
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
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        reason: str | None = None  # why this layer cancelled the task: "timeout" or "gone"
        started = False
        watcher: asyncio.Task[None] | None = None
        left: asyncio.Future[Message] = loop.create_future()

        def stop(why: str) -> None:
            nonlocal reason
            if reason is None:
                reason = why
                task.cancel()

        async def watch() -> None:
            message = await receive()
            while message["type"] != "http.disconnect":
                message = await receive()
            left.set_result(message)
            stop("gone")

        async def watched_receive() -> Message:
            nonlocal watcher
            if watcher is not None:  # after the body, the only message left is the disconnect
                return await asyncio.shield(left)
            message = await receive()
            if message["type"] == "http.disconnect":
                left.set_result(message)
            elif not message.get("more_body", False):
                watcher = loop.create_task(watch())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        timer = loop.call_later(self.timeout_s(), stop, "timeout")
        try:
            await self.app(scope, watched_receive, tracking_send)
            return
        except asyncio.CancelledError:
            if reason is None:  # not ours (server shutdown): let it through
                raise
            task.uncancel()
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()
        if started:  # too late for a status: the client sees a cut response
            return
        if reason == "gone":  # answered to nobody, counted as 499 by the metrics layer
            error = ApiError(
                499, "client_closed_request", "the client disconnected before the answer was ready"
            )
        else:
            error = ApiError(504, "timeout", f"request took longer than {self.timeout_s()}s")
        await error_body(scope["path"], error)(scope, watched_receive, send)
