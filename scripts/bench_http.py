"""HTTP protocol cost: uvicorn's plain httptools, the guarded one (serve/http.py), and h11.

    .venv/bin/python scripts/bench_http.py [--rounds 6] [--seconds 2] [--header-mb 120]

Each protocol serves the same app (``create_app`` with the tiny ONNX model of the server
tests, so the protocol's share of the work is as large as it gets) on loopback; `wrk` (one
thread, 32 connections) measures requests per second on ``GET /healthz`` and on ``POST
/v1/classify`` with a 32 px PNG. The three servers run at once, each paused while another is
measured, in an order that rotates every round; the table gives medians and the median of the
per-round ratios to plain httptools (robust to other load on a shared machine). Then one client sends a request head of ``--header-mb`` MB in
64 KB writes to each protocol while another polls ``/healthz``: what the big head gets back,
after how long, and the slowest ``/healthz`` answer meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROTOCOLS = ("httptools", "guarded", "h11")
MAX_HEAD = 16384
WRK_LUA = ROOT / "scripts" / "bench_wrk.lua"


def serve(protocol: str, port: int, model: str) -> None:
    """The server process: ``serve.cli``'s uvicorn settings with the protocol swapped."""
    import uvicorn

    from serve.app import create_app
    from serve.cli import uvicorn_config
    from serve.settings import Settings

    settings = Settings(model=Path(model), port=port, threads=1, access_log=False, log_level="error")
    config = uvicorn_config(settings, create_app(settings))
    if protocol == "httptools":
        config.http = "httptools"
    elif protocol == "h11":
        config.http = "h11"
        config.h11_max_incomplete_event_size = MAX_HEAD
    uvicorn.Server(config).run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(protocol: str, model: Path):
    port = free_port()
    argv = [sys.executable, __file__, "--serve", protocol, str(port), str(model)]
    process = subprocess.Popen(argv, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def paused(pid: int):
    """Keep the server process ``pid`` stopped (SIGSTOP) except inside :func:`running`."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def running(pid: int):
    os.kill(pid, signal.SIGCONT)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGSTOP)


def wrk(url: str, manifest: Path, seconds: float) -> float:
    command = ["wrk", "-t1", "-c32", f"-d{round(seconds)}s", "-s", str(WRK_LUA), url, "--", str(manifest)]
    result = json.loads(
        subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    )
    if result["non_2xx"] or result["socket_errors"]:
        raise RuntimeError(f"wrk saw errors: {result}")
    return result["requests"] / (result["duration_us"] / 1e6)


def big_head(port: int, megabytes: int) -> tuple[str, float]:
    """Send a head of ``megabytes`` in 64 KB writes; (first status line or how it ended, seconds)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(60)
    start = time.perf_counter()
    answer = b""
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * 65536
        for _ in range(megabytes * 16):
            sock.sendall(chunk)
        sock.sendall(b"\r\n\r\n")
        answer = sock.recv(256)
    except OSError:  # the server closed while we were still sending: read what it said
        with contextlib.suppress(OSError):
            answer = sock.recv(256)
    finally:
        sock.close()
    line = answer.split(b"\r\n")[0].decode(errors="replace") or "closed"
    return line, time.perf_counter() - start


def probe_head(port: int, megabytes: int) -> tuple[str, float, float]:
    """The big head against a concurrent /healthz poller: (answer, seconds, slowest healthz s)."""
    stop = threading.Event()
    slowest = [0.0]

    def poll() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            while not stop.is_set():
                start = time.perf_counter()
                client.get("/healthz")
                slowest[0] = max(slowest[0], time.perf_counter() - start)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        line, seconds = big_head(port, megabytes)
    finally:
        stop.set()
        poller.join()
    return line, seconds, slowest[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--header-mb", type=int, default=120)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return
    from tests.serve.conftest import build_model, image_bytes

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_model(folder / "tiny.onnx")
        (folder / "empty").write_bytes(b"")
        buffer = io.BytesIO()
        Image.open(io.BytesIO(image_bytes(size=(32, 32)))).save(buffer, format="PNG")
        (folder / "image.png").write_bytes(buffer.getvalue())
        manifests = {
            "GET /healthz": folder / "healthz.tsv",
            "POST /v1/classify (32 px PNG)": folder / "classify.tsv",
        }
        manifests["GET /healthz"].write_text(f"GET\t/healthz\ttext/plain\t{folder / 'empty'}\n")
        manifests["POST /v1/classify (32 px PNG)"].write_text(
            f"POST\t/v1/classify\timage/png\t{folder / 'image.png'}\n"
        )
        # All three run at once, each paused (SIGSTOP) while another is measured; the order
        # rotates every round, and each round gives a ratio to plain httptools in that round.
        ratios: dict[tuple[str, str], list[float]] = {}
        rates: dict[tuple[str, str], list[float]] = {}
        with contextlib.ExitStack() as stack:
            started = {p: stack.enter_context(server(p, model)) for p in PROTOCOLS}
            ports = {p: port for p, (port, _) in started.items()}
            processes = {p: stack.enter_context(paused(pid)) for p, (_, pid) in started.items()}
            for round_ in range(args.rounds):
                order = PROTOCOLS[round_ % 3 :] + PROTOCOLS[: round_ % 3]
                for name, manifest in manifests.items():
                    measured = {}
                    for protocol in order:
                        with running(processes[protocol]):
                            measured[protocol] = wrk(
                                f"http://127.0.0.1:{ports[protocol]}", manifest, args.seconds
                            )
                    for protocol in PROTOCOLS:
                        rates.setdefault((protocol, name), []).append(measured[protocol])
                        ratios.setdefault((protocol, name), []).append(
                            measured[protocol] / measured["httptools"]
                        )
        print(
            f"| requests/s (median of {args.rounds} rounds; ratio: median of per-round ratios) | "
            + " | ".join(PROTOCOLS)
            + " |"
        )
        print("|---|" + "---|" * len(PROTOCOLS))
        for name in manifests:
            cells = [
                f"{statistics.median(rates[(p, name)]):,.0f} ({statistics.median(ratios[(p, name)]):.2f}x)"
                for p in PROTOCOLS
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()
        print(f"| {args.header_mb} MB request head | answer | after | slowest /healthz meanwhile |")
        print("|---|---|---|---|")
        for protocol in PROTOCOLS:
            with server(protocol, model) as (port, _):
                line, seconds, slowest = probe_head(port, args.header_mb)
            print(f"| {protocol} | {line} | {seconds:.2f} s | {slowest * 1000:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
