"""Hostile clients against a real `vit serve` process on loopback (issue 19's probes).

One server for the module, started the way users start it (``python -m serve``, the
``serve.cli`` run path, with an API key file and a short ``--header-timeout-s``), dying with
the test process. Every probe runs under :class:`Watch`: a second client polls ``/healthz``
throughout, and the probe passes only if every poll was answered (within a generous bound,
to catch a stalled event loop, not to time anything), one poll overlapped the probe, and the
server's peak resident memory grew by less than :data:`RSS_BOUND` while it ran.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.serve.conftest import build_model, free_port, image_bytes

ROOT = Path(__file__).resolve().parents[2]
KEY = "hostile-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEAD_TIMEOUT_S = 0.5
HEALTHZ_BOUND_S = 2.0  # a poll slower than this means the event loop was blocked
RSS_BOUND = 200 << 20  # the bound on one probe's peak memory growth
WAIT_S = 30
pytestmark = pytest.mark.timeout(180)


def _die_with_parent() -> None:
    """Runs in the server process before exec: SIGTERM it when the test process goes away."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    url: str
    port: int
    pid: int
    log: Path
    name: str
    model_dir: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("hostile")
    model = build_model(folder / "models" / "tiny.onnx", attention=True)
    key_file = folder / "key"
    key_file.write_text(KEY)
    port = free_port()
    log = folder / "server.log"
    argv = [sys.executable, "-m", "serve", str(model), "--port", str(port), "--threads", "1"]
    argv += ["--api-key-file", str(key_file), "--header-timeout-s", str(HEAD_TIMEOUT_S), "--no-access-log"]
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # poll a condition (bounded), not a duration
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)
        yield Server(url, port, process.pid, log, model.stem, model.parent)
    finally:
        process.terminate()
        try:
            process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()


def status_bytes(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field_name)


@dataclass
class Watch:
    """``/healthz`` polled throughout a probe, and the server's peak memory growth over it."""

    server: Server
    polls: list[tuple[float, float, int | str]] = field(default_factory=list)  # (start, end, status)
    probe_start: float = 0.0
    probe_end: float = 0.0
    growth: int = 0

    def _poll(self, stop: threading.Event, first: threading.Event) -> None:
        with httpx.Client(base_url=self.server.url, timeout=HEALTHZ_BOUND_S) as client:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    outcome: int | str = client.get("/healthz").status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.polls.append((start, time.monotonic(), outcome))
                first.set()

    @contextlib.contextmanager
    def probe(self) -> Iterator[None]:
        stop, first = threading.Event(), threading.Event()
        poller = threading.Thread(target=self._poll, args=(stop, first), daemon=True)
        poller.start()
        assert first.wait(WAIT_S), "no /healthz answer before the probe"
        Path(f"/proc/{self.server.pid}/clear_refs").write_text("5")  # peak RSS := current RSS
        before = status_bytes(self.server.pid, "VmRSS")
        self.probe_start = time.monotonic()
        try:
            yield
        finally:
            self.probe_end = time.monotonic()
            count = len(self.polls)
            while len(self.polls) == count and poller.is_alive():  # one more poll after the probe
                time.sleep(0.005)
            stop.set()
            poller.join(WAIT_S)
        self.growth = status_bytes(self.server.pid, "VmHWM") - before
        failed = [p for p in self.polls if p[2] != 200]
        assert not failed, f"/healthz failed during the probe: {failed[:3]}"
        overlapping = [p for p in self.polls if p[0] < self.probe_end and p[1] > self.probe_start]
        assert overlapping, "no /healthz answer overlapped the probe"
        assert self.growth < RSS_BOUND, f"peak RSS grew by {self.growth >> 20} MB"


@pytest.fixture
def watch(server: Server) -> Watch:
    return Watch(server)


def strip_png(length: int) -> bytes:
    """A 1 x ``length`` bilevel PNG: a few hundred bytes to 77 KB, within every source limit."""
    buffer = io.BytesIO()
    Image.new("1", (1, length)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def strips() -> dict[int, bytes]:
    return {length: strip_png(length) for length in (200_000, 40_000_000)}


def error_code(answer: httpx.Response) -> str:
    return answer.json()["error"]["code"]


@pytest.mark.parametrize("length", [200_000, 40_000_000])
@pytest.mark.parametrize("route", ["/v1/classify", "/v1/explain", "oip"])
def test_strips_that_resize_to_gigapixels_are_413_before_decoding(
    server: Server, watch: Watch, strips: dict[int, bytes], length: int, route: str
) -> None:
    data = strips[length]
    with watch.probe():
        if route == "oip":
            body = {
                "inputs": [
                    {
                        "name": "image_bytes",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(data).decode()],
                    }
                ]
            }
            answer = httpx.post(
                f"{server.url}/v2/models/{server.name}/infer", json=body, headers=AUTH, timeout=WAIT_S
            )
            message = answer.json()["error"]
        else:
            headers = {**AUTH, "Content-Type": "image/png"}
            answer = httpx.post(server.url + route, content=data, headers=headers, timeout=WAIT_S)
            assert error_code(answer) == "image_too_large"
            message = answer.json()["error"]["message"]
    assert answer.status_code == 413, answer.text
    assert "would be resized" in message and f"1x{length}" in message


def test_six_strips_in_one_multipart_are_413(server: Server, watch: Watch, strips: dict[int, bytes]) -> None:
    files = [("files", (f"strip{i}.png", strips[40_000_000], "image/png")) for i in range(6)]
    with watch.probe():
        answer = httpx.post(server.url + "/v1/classify", files=files, headers=AUTH, timeout=WAIT_S)
    assert answer.status_code == 413 and error_code(answer) == "image_too_large"


def test_an_explain_overlay_of_a_large_image_is_bounded(server: Server, watch: Watch) -> None:
    # A 16 Mpx picture within every limit (1 MB as PNG): its overlay must not be drawn and
    # PNG-encoded at full resolution (about 1 GB and seconds of CPU for this one).
    picture = Image.merge("RGB", [Image.linear_gradient("L").resize((4000, 4000))] * 3)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    headers = {**AUTH, "Content-Type": "image/png", "Accept": "image/png"}
    with watch.probe():
        answer = httpx.post(
            server.url + "/v1/explain", content=buffer.getvalue(), headers=headers, timeout=WAIT_S
        )
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"


def test_a_hundred_thousand_duplicate_outputs_are_400(server: Server, watch: Watch) -> None:
    blob = base64.b64encode(image_bytes("dog")).decode()
    body = {
        "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [blob]}],
        "outputs": [{"name": "logits"}] * 100_000,
    }
    with watch.probe():
        answer = httpx.post(
            f"{server.url}/v2/models/{server.name}/infer", json=body, headers=AUTH, timeout=WAIT_S
        )
    assert answer.status_code == 400, answer.text[:300]


def test_deeply_nested_json_is_400_without_a_traceback(server: Server, watch: Watch) -> None:
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    headers = {**AUTH, "Content-Type": "application/json"}
    with watch.probe():
        answer = httpx.post(
            f"{server.url}/v2/models/{server.name}/infer", content=body, headers=headers, timeout=WAIT_S
        )
    assert answer.status_code == 400, answer.text[:300]
    assert "Traceback" not in server.log.read_text()


def raw_exchange(port: int, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``chunks`` until they end or the server stops reading; (its answer, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(WAIT_S)
    sent = 0
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for chunk in chunks:
                sock.sendall(chunk)
                sent += len(chunk)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer, sent
    finally:
        sock.close()


def big_head(megabytes: int) -> Iterator[bytes]:
    yield b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: "
    for _ in range(megabytes * 16):
        yield b"a" * 65536
    yield b"\r\n\r\n"


def test_a_megabyte_header_is_431(server: Server, watch: Watch) -> None:
    with watch.probe():
        answer, _ = raw_exchange(server.port, big_head(1))
    assert answer.startswith(b"HTTP/1.1 431")


def test_a_120_megabyte_header_is_refused_as_the_limit_passes(server: Server, watch: Watch) -> None:
    with watch.probe():
        answer, sent = raw_exchange(server.port, big_head(120))
    assert answer.startswith(b"HTTP/1.1 431")
    assert sent < 120 << 20  # the server closed long before reading (and parsing) it all


def test_idle_and_half_head_connections_are_closed(server: Server, watch: Watch) -> None:
    with watch.probe():
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
        half = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
        try:
            for sock in half:
                sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Ty")
            for sock in idle + half:
                sock.settimeout(WAIT_S)
            assert all(sock.recv(1024) == b"" for sock in idle)  # closed, nothing said
            for sock in half:
                answer = b""
                while chunk := sock.recv(1024):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 408")
        finally:
            for sock in idle + half:
                sock.close()


def test_an_eps_upload_is_415_before_any_plugin_runs(server: Server, watch: Watch) -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nshowpage\n%%EOF\n"
    with watch.probe():
        answer = httpx.post(
            server.url + "/v1/classify",
            content=eps,
            headers={**AUTH, "Content-Type": "image/x-eps"},
            timeout=WAIT_S,
        )
    assert answer.status_code == 415 and error_code(answer) == "unsupported_image_format"
    assert "Ghostscript" not in server.log.read_text()


def test_docs_name_no_other_host(server: Server, watch: Watch) -> None:
    with watch.probe():
        page = httpx.get(server.url + "/docs", timeout=WAIT_S)
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert all(httpx.get(server.url + url, timeout=WAIT_S).status_code == 200 for url in urls)


def test_reload_outside_the_model_directory_is_refused(server: Server, watch: Watch) -> None:
    with watch.probe():
        answer = httpx.post(
            server.url + "/v1/admin/reload", json={"path": "/etc/passwd"}, headers=AUTH, timeout=WAIT_S
        )
    assert answer.status_code == 422 and error_code(answer) == "reload_failed"
    model = httpx.get(server.url + "/v1/model", headers=AUTH, timeout=WAIT_S).json()
    assert model["name"] == server.name  # still the starting model


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server: Server, tmp_path: Path) -> None:
    # Bounded: a fixed seed and 20 examples per operation, positive and negative. Not checked:
    # positive_data_acceptance, since data a schema allows (any bytes as an image, any path to
    # reload) is rightly refused when it is not an image or not a model in --model-dir.
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.name" = "{server.name}"\n"path.version" = "1"\n')
    command = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run"]
    command += [server.url + "/openapi.json", "--max-examples", "20", "--seed", "1", "--mode", "all"]
    command += ["-H", f"Authorization: {AUTH['Authorization']}", "--no-color", "--request-timeout", "10"]
    command += ["--exclude-checks", "positive_data_acceptance", "--report-dir", str(tmp_path / "report")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=150, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Traceback" not in server.log.read_text()


def test_the_server_survived(server: Server) -> None:
    answer = httpx.post(
        server.url + "/v1/classify", content=image_bytes("dog"), headers={**AUTH, "Content-Type": "image/png"}
    )
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "dog"
    assert json.loads(httpx.get(server.url + "/healthz").text)["status"] == "ok"
