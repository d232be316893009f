"""Runtime state behind the routes: current engine, batcher, thread pool, metrics, API key.

Shared by the v1 routes (``serve/app.py``) and the Open Inference Protocol routes
(``serve/oip.py``); both reach it through :func:`get_server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel

from serve.batcher import Batcher, ItemResult
from serve.engine import Engine, default_instances
from serve.errors import ApiError, not_ready
from serve.inputs import Prepared, Upload, prepare
from serve.observability import Metrics
from serve.settings import Settings

log = logging.getLogger("serve")
T = TypeVar("T")


def instance_count(settings: Settings) -> int:
    """Batches running at once: ``--instances``, else the device's default."""
    return settings.instances or default_instances(settings.device)


def open_engine(settings: Settings, path: Path | None = None) -> Engine:
    """The engine `vit serve` runs (``path``: another file for a reload). With several instances
    the batches run on the instances' sessions, so the all-threads session runs only a lone
    request on an idle server (:meth:`Batcher.alone`): its threads may spin (``--spin``)."""
    return Engine(
        path or settings.model,
        device=settings.device,
        threads=settings.threads,
        spinning=settings.spin and instance_count(settings) > 1,
    )


class Server:
    """Runtime state behind the routes: the current engine, the batcher, pools and metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine | None = None  # swapped by reload; requests keep the one they started with
        self.ready = False
        self.load_error: str | None = None
        self.metrics = Metrics()
        self.batcher = Batcher(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            instances=instance_count(settings),
            on_batch=self.metrics.observe_batch,
        )
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="vit-pre")
        self._reload_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        if self.settings.model_name or self.engine is None:
            return self.settings.name
        return self.engine.path.stem

    def current(self) -> Engine:
        if not self.ready or self.engine is None:
            raise not_ready(
                f"model is not ready: {self.load_error}" if self.load_error else "model is loading"
            )
        return self.engine

    def _build(self, path: Path, engine: Engine | None) -> Engine:
        engine = engine or open_engine(self.settings, path)
        engine.warmup(self.settings.max_batch_size, self.settings.run_batch_size, self.batcher.instances)
        return engine

    async def load(self, path: str | Path | None = None, engine: Engine | None = None) -> Engine:
        """Load (or take) an engine, warm it off the event loop, then swap it in."""
        async with self._reload_lock:
            target = Path(path) if path else (self.engine.path if self.engine else self.settings.model)
            start = time.perf_counter()
            new = await asyncio.to_thread(self._build, target, engine)
            seconds = new.load_seconds + time.perf_counter() - start
            self.engine, self.ready, self.load_error = new, True, None
            self.metrics.load_seconds.set(seconds)
            described = new.describe()
            self.metrics.model.info(
                {"name": self.name, "version": described["version"], "provider": described["provider"]}
            )
            log.info("serving %s (%s) on %s, loaded in %.2fs", new.path, self.name, new.providers[0], seconds)
            return new

    async def reload(self, path: str | Path | None = None) -> Engine:
        try:
            engine = await self.load(path)
        except Exception:
            self.metrics.reloads.labels("error").inc()
            raise
        self.metrics.reloads.labels("ok").inc()
        return engine

    async def prepare(
        self, engine: Engine, uploads: list[Upload], keep_image: bool = False
    ) -> list[Prepared]:
        """Decode and preprocess in the thread pool (PIL releases the GIL), overlapping inference."""
        loop = asyncio.get_running_loop()
        with self.batcher.incoming(len(uploads)):
            jobs = [loop.run_in_executor(self.pool, self._decoding(engine, u, keep_image)) for u in uploads]
            return list(await asyncio.gather(*jobs))

    def _decoding(self, engine: Engine, upload: Upload, keep_image: bool) -> Callable[[], Prepared]:
        """The decode-and-preprocess call for one upload, with this engine's preprocessing."""
        return partial(prepare, upload, engine.metadata.preprocessing, self.settings.max_pixels, keep_image)

    async def infer(
        self, engine: Engine, uploads: list[Upload], with_attention: bool = False, keep_image: bool = False
    ) -> tuple[list[Prepared], list[ItemResult]]:
        """Decode, preprocess and run the uploads; results in upload order.

        One image on an idle batcher takes the one-hop path (:meth:`Batcher.alone`); anything
        else is decoded in the thread pool and queued for batching.
        """
        if len(uploads) == 1 and self.batcher.idle():
            job = self._decoding(engine, uploads[0], keep_image)
            prepared, result = await self.batcher.alone(engine, job, with_attention)
            return [prepared], [result]
        prepared = await self.prepare(engine, uploads, keep_image)
        results = await self.batcher.submit(engine, [p.array for p in prepared], with_attention)
        return prepared, results

    async def while_connected(self, request: Request, work: Awaitable[T]) -> T:
        """Await ``work`` unless the client disconnects first; call after the body was read.

        A client that gives up (its own timeout, a closed page) gets its work cancelled, so its
        queued images are skipped instead of delaying everyone behind them; the request is
        answered (to nobody) and counted as 499, nginx's "client closed request". Neither
        Starlette nor uvicorn cancels a handler whose client left: we watch ``receive()``.
        """
        answer = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not answer.done():
                answer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await answer
        if answer.cancelled():
            raise ApiError(
                499, "client_closed_request", "the client disconnected before the answer was ready"
            )
        return answer.result()

    async def within_deadline(self, work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, self.settings.request_timeout_s)
        except asyncio.TimeoutError as exc:
            raise ApiError(
                504, "timeout", f"request took longer than {self.settings.request_timeout_s}s"
            ) from exc


async def _disconnected(request: Request) -> None:
    """Return once the client has disconnected (the request body must already be consumed)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# The dependencies are ``async def`` though they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, two thread hops per request for a dictionary lookup.
async def get_server(request: Request) -> Server:
    return request.app.state.server


async def require_key(request: Request) -> None:
    """``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` when the server has a key."""
    key = (await get_server(request)).settings.api_key
    if not key:
        return
    supplied = request.headers.get("x-api-key", "")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not supplied and scheme.lower() == "bearer":
        supplied = token.strip()
    if not supplied or not hmac.compare_digest(supplied.encode(), key.encode()):
        reason = "wrong API key" if supplied else "missing API key"
        raise ApiError(
            401,
            "unauthorized",
            f"{reason}: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
            {"WWW-Authenticate": 'Bearer realm="vit"'},
        )


class ReloadRequest(BaseModel):
    path: str | None = None


ServerDep = Annotated[Server, Depends(get_server)]
