"""The ASGI app: routers, the page, the request layers and the model's lifespan.

``create_app(settings)`` builds everything; ``uvicorn`` (see ``serve/cli.py``) runs it. Layers,
outermost first: metrics and access log (``serve/observability.py``), the body limit
(``serve/limits.py``), deadline and disconnect (``serve/lifecycle.py``), plain ``POST
/v1/classify`` requests answered past FastAPI (``serve/fastpath.py``), then FastAPI's routing
and the one error handler (``serve/errors.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from serve import health, oip, v1
from serve.docs import add_docs_routes
from serve.engine import Engine
from serve.errors import install_error_handlers
from serve.fastpath import FastClassify
from serve.lifecycle import RequestLifecycle
from serve.limits import BodyLimit
from serve.observability import ObservabilityMiddleware
from serve.settings import Settings
from serve.state import ServerState

log = logging.getLogger("serve")
STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    *,
    background_load: bool = False,
    handle_sighup: bool = False,
) -> FastAPI:
    """The ASGI app. ``background_load``: answer /healthz while the model loads (the CLI's mode)."""
    state = ServerState(settings)

    async def initial_load() -> None:
        try:
            await state.load(settings.model, engine)
        except Exception as exc:
            state.load_error = str(exc)
            log.error("cannot load %s: %s", settings.model, exc)
            if not background_load:
                raise

    async def reload_on_signal() -> None:
        try:
            await state.reload()
        except Exception as exc:  # a bad file on SIGHUP must not stop the server
            log.error("SIGHUP reload failed, still serving the previous model: %s", exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        state.batcher.start()
        loading = loop.create_task(initial_load()) if background_load else None
        if loading is None:
            await initial_load()
        if handle_sighup:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_on_signal()))
        try:
            yield
        finally:
            if handle_sighup:
                loop.remove_signal_handler(signal.SIGHUP)
            if loading is not None and not loading.done():
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            await state.batcher.stop(timeout=settings.request_timeout_s)
            state.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="vit serve",
        description="Image classification with a Vision Transformer exported by `vit export`.",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = state
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(v1.router)
    app.include_router(oip.router)
    add_page(app)
    add_docs_routes(app, settings)
    add_schemas(app, oip.component_schemas())
    app.add_middleware(FastClassify, answer=v1.classify_response, route=v1.CLASSIFY_ROUTE)
    app.add_middleware(RequestLifecycle, timeout_s=lambda: settings.request_timeout_s)
    app.add_middleware(BodyLimit, max_body_bytes=lambda: settings.max_body_bytes)
    app.add_middleware(
        ObservabilityMiddleware, metrics=state.metrics, log_requests=lambda: settings.access_log
    )
    return app


def add_page(app: FastAPI) -> None:
    """The web page and its files (open: the page asks for the key itself)."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def add_schemas(app: FastAPI, schemas: dict[str, Any]) -> None:
    """Put request-body schemas that no parameter declares (routes that parse their own body)
    into the document's components, where their ``$ref`` s point."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = generate()
        document.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
