"""The server's runtime state: the model being served, its loading and reloading, the pipeline.

One :class:`ServerState` per app, reached by the routes through ``serve/deps.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve.batcher import Batcher
from serve.engine import Engine, EngineError, default_instances
from serve.errors import not_ready
from serve.instances import warm_up
from serve.observability import Metrics
from serve.pipeline import Pipeline
from serve.settings import Settings

log = logging.getLogger("serve")


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
        ood_threshold=settings.ood_threshold,
    )


class ReloadRefused(EngineError):
    """A reload path that is missing, outside the model directory or not loadable: one message for all."""


class ServerState:
    """The current engine, the batcher, the preprocessing pool, metrics and the pipeline."""

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
        self.pipeline = Pipeline(settings, self.batcher, self.pool)
        self._reload_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        """The served name: ``--model-name`` or the starting file's stem, the same across reloads."""
        return self.settings.name

    def current(self) -> Engine:
        if not self.ready or self.engine is None:
            raise not_ready(
                f"model is not ready: {self.load_error}" if self.load_error else "model is loading"
            )
        return self.engine

    def _build(self, path: Path, engine: Engine | None) -> Engine:
        engine = engine or open_engine(self.settings, path)
        settings = self.settings
        warm_up(engine, settings.max_batch_size, settings.run_batch_size, self.batcher.instances)
        return engine

    async def load(self, path: Path, engine: Engine | None = None) -> Engine:
        """Load ``path`` (or take ``engine``), warm it off the event loop, then swap it in."""
        async with self._reload_lock:
            start = time.perf_counter()
            new = await asyncio.to_thread(self._build, Path(path), engine)
            seconds = new.load_seconds + time.perf_counter() - start
            self.engine, self.ready, self.load_error = new, True, None
            self.metrics.load_seconds.set(seconds)
            described = new.describe()
            self.metrics.model.info(
                {"name": self.name, "version": described["version"], "provider": described["provider"]}
            )
            log.info("serving %s (%s) on %s, loaded in %.2fs", new.path, self.name, new.providers[0], seconds)
            return new

    def reload_target(self, path: str | None) -> Path:
        """The file a reload may open: inside the model directory once symlinks are resolved."""
        if path is None:
            return self.engine.path if self.engine else self.settings.model
        allowed = self.settings.reload_dir
        requested = Path(path)
        resolved = (requested if requested.is_absolute() else allowed / requested).resolve()
        if not resolved.is_relative_to(allowed):
            raise ReloadRefused(f"outside the model directory {allowed}")
        if not resolved.is_file():
            raise ReloadRefused("no such file")
        return resolved

    async def reload(self, path: str | None = None) -> Engine:
        """Reload the file (or another file of the model directory); every attempt is logged."""
        try:
            engine = await self.load(self.reload_target(path))
        except Exception as exc:
            self.metrics.reloads.labels("error").inc()
            log.warning("reload of %s refused: %s", path or "the same file", exc)
            raise
        self.metrics.reloads.labels("ok").inc()
        log.info("reloaded %s", engine.path)
        return engine
