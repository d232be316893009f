"""serve/http.py through serve/cli.py's uvicorn settings: head size (431), head and idle
timeouts, the concurrency cap (503), on a real uvicorn on loopback with a trivial app."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn

from serve.cli import uvicorn_config
from serve.http import GuardedHttpToolsProtocol, guarded_protocol
from serve.settings import Settings
from tests.serve.conftest import free_port

WAIT_S = 20  # generous bound on any one read: a failing server must not hang the suite


async def hello(scope: dict, receive: Callable, send: Callable) -> None:
    """Reads the whole body, answers its length."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"read": size}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def serve() -> Iterator[Callable[..., int]]:
    """``serve(**settings)`` -> the port of uvicorn in a thread, configured by ``uvicorn_config``."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**overrides: object) -> int:
        values = {"port": free_port(), "log_level": "error", **overrides}
        settings = Settings(model=Path("unused.onnx"), **values)
        server = uvicorn.Server(uvicorn_config(settings, hello))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        while not server.started:  # poll a condition, not a duration
            assert thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return settings.port

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(WAIT_S)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(WAIT_S)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset after its answer counts as closing)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def read_response(sock: socket.socket) -> bytes:
    """One response with a content-length body, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            v for k, v in (line.split(b": ", 1) for line in head.split(b"\r\n")[1:]) if k == b"content-length"
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def head_of(size: int) -> bytes:
    """A ``Connection: close`` GET head of exactly ``size`` bytes (padded by one header)."""
    start = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


def send_and_read(port: int, payload: bytes) -> bytes:
    sock = connect(port)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused mid-send: read its answer
            sock.sendall(payload)
        return read_all(sock)
    finally:
        sock.close()


def test_head_up_to_the_limit_is_served_one_byte_more_is_431(serve: Callable[..., int]) -> None:
    port = serve(max_header_bytes=1024)
    assert send_and_read(port, head_of(1024)).startswith(b"HTTP/1.1 200")
    answer = send_and_read(port, head_of(1025))
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "header_too_large" and "1024 bytes" in body["error"]["message"]


def test_a_megabyte_head_is_refused_without_being_read(serve: Callable[..., int]) -> None:
    port = serve(max_header_bytes=16384)
    assert send_and_read(port, head_of(1 << 20)).startswith(b"HTTP/1.1 431")


def test_the_body_does_not_count_as_head(serve: Callable[..., int]) -> None:
    port = serve(max_header_bytes=1024)
    body = b"x" * 200_000  # arrives with the head in the same reads
    request = b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert json.loads(send_and_read(port, request + body).partition(b"\r\n\r\n")[2]) == {"read": len(body)}


def counter(limit: int) -> GuardedHttpToolsProtocol:
    """The protocol's head counting alone (no transport, no parser)."""
    protocol = object.__new__(guarded_protocol(limit, 1.0))
    protocol.head_bytes, protocol.head_tail = 0, b""
    return protocol


def test_head_counting_across_reads() -> None:
    head = head_of(100)
    split = counter(100)  # the terminator split over two reads, the second read over the limit
    assert split._head_fits(head[:-2]) and split._head_fits(head[-2:] + b"body" * 100)
    exact = counter(100)  # ends exactly at the limit, in one read with body after it
    assert exact._head_fits(head + b"body" * 100)
    over = counter(99)  # one byte too many
    assert not over._head_fits(head + b"body")
    trickle = counter(100)  # small reads without an end
    assert all(trickle._head_fits(b"a" * 10) for _ in range(10)) and not trickle._head_fits(b"a")


def test_silent_and_half_head_connections_are_closed(serve: Callable[..., int]) -> None:
    port = serve(header_timeout_s=0.2, timeout_keep_alive_s=60)
    silent = connect(port)
    assert read_all(silent) == b""  # closed by the server, nothing said
    silent.close()
    answer = send_and_read(port, b"GET / HTTP/1.1\r\nHost: t\r\nX-Half: a")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "header_timeout"


def test_a_kept_alive_connection_gets_the_head_timeout_again(serve: Callable[..., int]) -> None:
    port = serve(header_timeout_s=0.2, timeout_keep_alive_s=60)
    sock = connect(port)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Half")
        assert read_all(sock).startswith(b"HTTP/1.1 408")
    finally:
        sock.close()


def test_idle_keep_alive_connections_are_closed(serve: Callable[..., int]) -> None:
    port = serve(header_timeout_s=60, timeout_keep_alive_s=0.2)
    sock = connect(port)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        assert read_all(sock) == b""
    finally:
        sock.close()


def test_connections_above_the_limit_get_503(serve: Callable[..., int]) -> None:
    port = serve(limit_concurrency=2)
    first = connect(port)
    try:
        first.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(first).startswith(b"HTTP/1.1 200")  # kept alive: one connection open
        answer = send_and_read(port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503")
    finally:
        first.close()
