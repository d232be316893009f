"""The HTTP server: FastAPI routes over the engine (model adapter) and the batcher (transport).

``create_app(settings)`` builds everything; ``uvicorn`` (see ``serve/cli.py``) runs it. Every
client-caused failure is an :class:`ApiError` or a domain error mapped in ``serve/errors.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.engine import Engine, EngineError, top_k
from serve.errors import ApiError, install_error_handlers
from serve.inputs import IMAGE_BODY_OPENAPI, Prepared, Upload, read_uploads
from serve.observability import ObservabilityMiddleware
from serve.server import ReloadRequest, Server, ServerDep, require_key
from serve.settings import Settings

log = logging.getLogger("serve")
STATIC_DIR = Path(__file__).parent / "static"
EXPORT_HINT = "export one with `vit export CKPT -o model.onnx --with-attention`"


TopK = Annotated[int, Query(ge=1, description="number of classes returned (clamped to the class count)")]


def _result(name: str, predictions: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": name, "predictions": predictions, **extra}


def _overlay_png(prepared: Prepared, grid: Any) -> bytes:
    from serve.render import overlay_heatmap  # numpy + PIL only

    image = prepared.image
    left, top, right, bottom = prepared.crop_box
    width, height = image.size
    view = image.crop(
        (round(left * width), round(top * height), round(right * width), round(bottom * height))
    )
    buffer = io.BytesIO()
    overlay_heatmap(view, grid).save(buffer, format="PNG")
    return buffer.getvalue()


def add_routes(app: FastAPI) -> None:
    keyed = [Depends(require_key)]

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(server: ServerDep) -> dict[str, str]:
        server.current()
        return {"status": "ready", "model": server.name}

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics(server: ServerDep) -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", tags=["v1"], dependencies=keyed)
    async def model(server: ServerDep) -> dict[str, Any]:
        engine = server.current()
        settings = server.settings
        batching = {
            "max_batch_size": settings.max_batch_size,
            "max_wait_ms": settings.max_wait_ms,
            "instances": server.batcher.instances,
            "threads": engine.threads,  # intra-op threads of a lone request's call
            "instance_threads": engine.instance_threads,  # and of each instance's batch call
        }
        return {"name": server.name, **engine.describe(), "batching": batching}

    @app.post("/v1/classify", tags=["v1"], dependencies=keyed, openapi_extra=IMAGE_BODY_OPENAPI)
    async def classify(request: Request, server: ServerDep, top_k: TopK = 5) -> Response:
        """Top-k classes for one image (raw body) or several (multipart ``file``/``files``)."""

        async def work() -> Response:
            engine = server.current()
            uploads, many = await read_uploads(request, server.settings.max_images)
            return await server.while_connected(request, answer(engine, uploads, many))

        async def answer(engine: Engine, uploads: list[Upload], many: bool) -> Response:
            _, results = await server.infer(engine, uploads)
            answers = [
                _result(server.name, [p.as_dict() for p in _top(r.logits, r.engine, top_k)]) for r in results
            ]
            return JSONResponse(answers if many else answers[0])

        return await server.within_deadline(work())

    @app.post("/v1/explain", tags=["v1"], dependencies=keyed, openapi_extra=IMAGE_BODY_OPENAPI)
    async def explain(request: Request, server: ServerDep, top_k: TopK = 5) -> Response:
        """Predictions plus the attention map (JSON), or an overlay PNG with ``Accept: image/png``."""

        async def work() -> Response:
            engine = server.current()
            if not engine.has_attention:
                raise ApiError(
                    409, "no_attention", f"{engine.path.name} has no attention output; {EXPORT_HINT}"
                )
            want_png = "image/png" in request.headers.get("accept", "")
            uploads, many = await read_uploads(request, server.settings.max_images)
            if want_png and len(uploads) != 1:
                raise ApiError(422, "invalid_parameter", "Accept: image/png needs exactly one image")
            return await server.while_connected(request, answer(engine, uploads, many, want_png))

        async def answer(engine: Engine, uploads: list[Upload], many: bool, want_png: bool) -> Response:
            prepared, results = await server.infer(engine, uploads, with_attention=True, keep_image=True)
            if want_png:
                loop = asyncio.get_running_loop()
                png = await loop.run_in_executor(server.pool, _overlay_png, prepared[0], results[0].attention)
                return Response(png, media_type="image/png")
            answers = [
                _result(
                    server.name,
                    [p.as_dict() for p in _top(r.logits, r.engine, top_k)],
                    grid=r.attention.round(6).tolist(),
                    grid_size=list(r.attention.shape),
                    crop_box=[round(v, 6) for v in p.crop_box],
                )
                for p, r in zip(prepared, results, strict=True)
            ]
            return JSONResponse(answers if many else answers[0])

        return await server.within_deadline(work())

    @app.post("/v1/admin/reload", tags=["admin"], dependencies=keyed)
    async def reload(server: ServerDep, body: ReloadRequest | None = None) -> dict[str, Any]:
        """Load the model file again (or ``{"path": ...}``), warm it, swap it in atomically."""
        if not server.settings.api_key:
            raise ApiError(
                403, "forbidden", "admin routes need a server started with --api-key; or send SIGHUP"
            )
        try:
            engine = await server.reload(body.path if body else None)
        except EngineError as exc:
            raise ApiError(422, "reload_failed", f"{exc}; still serving the previous model") from exc
        return {"status": "reloaded", "name": server.name, **engine.describe()}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _top(logits: Any, engine: Engine, k: int) -> list[Any]:
    return top_k(logits, engine.labels, k)


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    *,
    background_load: bool = False,
    handle_sighup: bool = False,
) -> FastAPI:
    """The ASGI app. ``background_load``: answer /healthz while the model loads (the CLI's mode)."""
    server = Server(settings)

    async def initial_load() -> None:
        try:
            await server.load(settings.model, engine)
        except Exception as exc:
            server.load_error = str(exc)
            log.error("cannot load %s: %s", settings.model, exc)
            if not background_load:
                raise

    async def reload_on_signal() -> None:
        try:
            await server.reload()
        except Exception as exc:  # a bad file on SIGHUP must not stop the server
            log.error("SIGHUP reload failed, still serving the previous model: %s", exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        server.batcher.start()
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
            await server.batcher.stop(timeout=settings.request_timeout_s)
            server.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="vit serve",
        description="Image classification with a Vision Transformer exported by `vit export`.",
        version="1",
        lifespan=lifespan,
    )
    app.state.server = server
    install_error_handlers(app)
    add_routes(app)
    from serve.oip import router as oip_router  # after the v1 routes: /v2 uses the same Server

    app.include_router(oip_router)
    app.add_middleware(
        ObservabilityMiddleware,
        metrics=server.metrics,
        max_body_bytes=lambda: settings.max_body_bytes,
        log_requests=lambda: settings.access_log,
    )
    return app
