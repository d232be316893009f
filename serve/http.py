"""uvicorn's httptools protocol with the two limits it lacks: request-head size and read time.

Why a subclass rather than a setting: uvicorn's httptools backend has no header-size limit (a
1 MB head is accepted, and the pinned httptools concatenates a header that arrives in pieces,
so a 120 MB one takes seconds of event-loop time to parse), and neither backend closes a
connection that stops in the middle of its head. uvicorn's h11 backend does bound the head
(``h11_max_incomplete_event_size``), but answers 400 instead of 431, still has no read timeout
and parses in pure Python (docs/SERVING.md has the measured throughput of the three).

The head is counted before the parser sees it, so an oversized head is refused once
``max_head_bytes`` are passed, without being parsed. A request pipelined behind another in the
same socket read is counted from the next read (at most one read, 256 KB, more).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_END = b"\r\n\r\n"


def _response(status: bytes, code: str, message: str) -> bytes:
    """A complete ``Connection: close`` answer in the v1 error shape (the path is not known yet)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
    )
    return head + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """A request head larger than ``max_head_bytes`` is 431; one not complete within
    ``head_timeout_s`` of the connection (or of its first byte, on a kept-alive one) is closed."""

    max_head_bytes = 16384
    head_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_head = True
        self.head_bytes = 0
        self.head_tail = b""  # the last bytes read, to find a terminator split across reads
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.in_head and not self._head_fits(data):
            self._refuse(
                b"431 Request Header Fields Too Large",
                "header_too_large",
                f"the request line and headers exceed {self.max_head_bytes} bytes",
            )
            return
        super().data_received(data)

    def _head_fits(self, data: bytes) -> bool:
        """Count ``data`` into the head; False once the head is over the limit."""
        room = self.max_head_bytes - self.head_bytes
        window = self.head_tail + data
        start = len(self.head_tail)  # where ``data`` begins in ``window``
        self.head_bytes += len(data)
        self.head_tail = window[-3:]
        if len(data) <= room:
            return True
        # Over the limit unless the head ends within it (the rest is body or the next request).
        return window.find(HEAD_END, 0, start + room) != -1

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True
        if self.head_timer is None:  # a kept-alive connection's next request
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Whatever arrives next on this connection is the next request's head.
        self.in_head = True
        self.head_bytes = 0
        self.head_tail = b""

    def _arm_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or not self.in_head:
            return
        if self.head_bytes:  # a head begun and not finished: say why before closing
            self._refuse(
                b"408 Request Timeout",
                "header_timeout",
                f"the request head was not complete within {self.head_timeout_s:g} s",
            )
        else:
            self.transport.close()

    def _refuse(self, status: bytes, code: str, message: str) -> None:
        self.in_head = False
        self._cancel_head_timer()
        self.logger.warning("%s from %s: %s", status.decode(), self.client, message)
        self.transport.write(_response(status, code, message))
        self.transport.close()


def guarded_protocol(max_head_bytes: int, head_timeout_s: float) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``, with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s},
    )
