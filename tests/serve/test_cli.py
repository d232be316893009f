"""serve/cli.py and serve/settings.py: flags, environment, errors, and one real server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serve.cli import main, uvicorn_config
from serve.http import GuardedHttpToolsProtocol
from serve.settings import Settings, build_parser, load_settings
from tests.serve.conftest import free_port, image_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_flags_beat_environment_beat_defaults() -> None:
    env = {
        "VIT_SERVE_PORT": "9001",
        "VIT_SERVE_MAX_WAIT_MS": "2.5",
        "VIT_SERVE_ACCESS_LOG": "false",
        "VIT_SERVE_MODEL": "env.onnx",
    }
    settings = load_settings(["--port", "9002"], env)
    assert settings.port == 9002 and settings.max_wait_ms == 2.5 and settings.access_log is False
    assert settings.model == Path("env.onnx") and settings.name == "env"
    assert settings.max_batch_size == Settings().max_batch_size
    assert load_settings(["m.onnx", "--api-key", "k", "--device", "cpu"], {}).api_key == "k"


def test_every_setting_has_a_flag_and_an_env_var() -> None:
    text = build_parser().format_help()
    for name in Settings.model_fields:
        assert f"VIT_SERVE_{name.upper()}" in text
        if name != "model":
            assert "--" + name.replace("_", "-") in text


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {}, "no model file given"),
        (["m.onnx"], {"VIT_SERVE_PORT": "eighty"}, "VIT_SERVE_PORT"),
        (["m.onnx", "--max-batch-size", "0"], {}, "max_batch_size"),
        (["m.onnx"], {"VIT_SERVE_ACCESS_LOG": "maybe"}, "VIT_SERVE_ACCESS_LOG"),
    ],
)
def test_bad_settings_are_named(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        load_settings(argv, env)


def test_main_reports_bad_input_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.onnx"), "--port", "0"]) == 2
    assert "missing.onnx: no such model file" in capsys.readouterr().err
    assert main(["m.onnx", "--max-wait-ms", "-1"]) == 2
    assert "max_wait_ms" in capsys.readouterr().err


def test_serve_package_never_imports_torch() -> None:
    code = (
        "import sys, serve.cli, serve.app, serve.oip, serve.render;"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'lightning', 'vit'});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_vit_serve_dispatches_here() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vit", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "VIT_SERVE_MAX_BATCH_SIZE" in result.stdout


def wait_ready(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # poll readiness, not a timing assumption
    raise AssertionError("server did not become ready")


def test_real_server_process(tiny_model: Path) -> None:
    """python -m serve on a free port: ready, classify, SIGHUP reload, SIGTERM drains in-flight work."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VIT_SERVE_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "serve", str(tiny_model), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    png = {"content-type": "image/png"}
    try:
        wait_ready(base, process)
        response = httpx.post(f"{base}/v1/classify", content=image_bytes("bird"), headers=png)
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "bird"

        process.send_signal(signal.SIGHUP)  # reload the same file
        wait_for_metric(base, 'vit_model_reloads_total{result="ok"} 1.0')

        # A request whose body is still arriving when SIGTERM comes must still be answered.
        data, first_sent, release = image_bytes("dog"), threading.Event(), threading.Event()

        def slow_body() -> Iterator[bytes]:
            yield data[:40]
            first_sent.set()
            release.wait(30)
            yield data[40:]

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post, f"{base}/v1/classify", content=slow_body(), headers=png, timeout=30
            )
            first_sent.wait(30)
            wait_for_metric(base, "vit_requests_in_flight 2.0")  # that request and this scrape
            process.send_signal(signal.SIGTERM)
            release.set()
            drained = pending.result()
        assert drained.status_code == 200 and drained.json()["predictions"][0]["label"] == "dog"
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # uvicorn re-raises SIGTERM after a graceful shutdown, so the status is -SIGTERM (or 0).
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr and "Traceback" not in stderr
    access = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert sum(entry["route"] == "/v1/classify" and entry["status"] == 200 for entry in access) == 2


def wait_for_metric(base: str, line: str) -> None:
    deadline = time.monotonic() + 30
    while line not in httpx.get(f"{base}/metrics").text:
        assert time.monotonic() < deadline, f"metric never showed {line!r}"
        time.sleep(0.05)  # poll a condition


def test_every_setting_is_in_the_documented_table() -> None:
    serving = (Path(__file__).parents[2] / "docs" / "SERVING.md").read_text()
    rows = [line for line in serving.splitlines() if line.startswith("| ") and "`VIT_SERVE_" in line]
    documented = {line.split("`VIT_SERVE_")[1].split("`")[0] for line in rows}
    assert documented == {name.upper() for name in Settings.model_fields}


def test_api_key_flag_warns_and_key_file_is_read_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="serve"):
        load_settings(["m.onnx", "--api-key", "k"], {})
    assert "process list" in caplog.text
    with pytest.raises(ValueError, match="api_key_file"):
        load_settings(["m.onnx", "--api-key-file", str(tmp_path / "none")], {})
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_settings(["m.onnx"], {"VIT_SERVE_API_KEY_FILE": str(tmp_path / "empty")})


def test_uvicorn_runs_the_guarded_protocol_with_the_http_limits() -> None:
    settings = Settings(
        model=Path("m.onnx"),
        max_header_bytes=2048,
        header_timeout_s=3,
        timeout_keep_alive_s=7,
        limit_concurrency=0,
    )
    config = uvicorn_config(settings, app=None)
    assert issubclass(config.http, GuardedHttpToolsProtocol)
    assert (config.http.max_head_bytes, config.http.head_timeout_s) == (2048, 3)
    assert config.timeout_keep_alive == 7 and config.limit_concurrency is None and config.ws == "none"
    assert (
        uvicorn_config(settings.model_copy(update={"limit_concurrency": 5}), app=None).limit_concurrency == 5
    )
