"""``vit serve`` / ``vit-serve`` / ``python -m serve``: load the model, then run uvicorn.

The model file is opened before the port is bound, so a wrong path or a file without vit
metadata fails at once with a message and exit status 2; warm-up then runs while
``/healthz`` already answers and ``/readyz`` says 503 until the model is warm.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import uvicorn

from serve.app import create_app
from serve.engine import EngineError
from serve.http import guarded_protocol
from serve.settings import Settings, load_settings
from serve.state import open_engine


def configure_logging(level: str) -> None:
    """``serve`` logs to stderr; the access log is one JSON object per line, nothing around it."""
    text = logging.StreamHandler()
    text.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    serve_log = logging.getLogger("serve")
    serve_log.handlers[:] = [text]
    serve_log.setLevel(logging.DEBUG if level == "trace" else level.upper())  # uvicorn-only level
    serve_log.propagate = False
    access = logging.getLogger("serve.access")
    plain = logging.StreamHandler()
    plain.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [plain]
    access.propagate = False


def uvicorn_config(settings: Settings, app: Any) -> uvicorn.Config:
    """uvicorn's settings: the guarded httptools protocol (serve/http.py) and the HTTP limits."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings.max_header_bytes, settings.header_timeout_s),
        ws="none",  # no WebSocket routes: an Upgrade header is an ordinary request
        timeout_keep_alive=settings.timeout_keep_alive_s,  # type: ignore[arg-type]  # any number works
        limit_concurrency=settings.limit_concurrency or None,
        log_level=settings.log_level,
        access_log=False,  # serve.access writes the structured one
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 1,
        server_header=False,
    )


def run(settings: Settings) -> int:
    configure_logging(settings.log_level)
    try:
        engine = open_engine(settings)
    except EngineError as exc:
        print(f"vit serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, engine, background_load=True, handle_sighup=True)
    server = uvicorn.Server(uvicorn_config(settings, app))
    server.run()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings(argv)
    except ValueError as exc:
        print(f"vit serve: {exc}", file=sys.stderr)
        return 2
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
