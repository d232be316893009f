"""Dynamic batching: requests queue, one worker thread runs them through the model in batches.

A batch closes when it holds ``max_batch_size`` images, or ``max_wait_ms`` after its first
image was queued (Triton's ``max_queue_delay``), or at once when no other image is on its way
(being decoded, see :meth:`Batcher.incoming`): a lone request never waits for company. While a
batch runs the next one fills, so under load batches grow on their own. The engine runs a
batch in chunks of its ``run_batch_size`` (on CPUs small batches are faster per image). Inference runs in one dedicated thread, never on the event loop.
Each queued image carries the engine it was preprocessed for, so a hot reload never mixes
models inside a batch and requests already queued finish on the engine they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from serve.engine import Engine

log = logging.getLogger("serve.batcher")


class OverloadedError(RuntimeError):
    """The queue is full: the caller should answer 503 with ``Retry-After``."""


@dataclass
class ItemResult:
    """One image's raw model outputs and the engine that produced them."""

    logits: np.ndarray
    attention: np.ndarray | None
    engine: Engine


@dataclass
class _Item:
    array: np.ndarray
    engine: Engine
    with_attention: bool
    future: asyncio.Future[ItemResult]
    enqueued: float


def _infer(engine: Engine, arrays: list[np.ndarray], with_attention: bool):
    # Stacking a large batch is a ~20 MB copy: do it here, off the event loop.
    return engine.infer(np.stack(arrays), with_attention=with_attention)


class Batcher:
    """Queue images, run them in batches on one worker thread, route results to their futures."""

    def __init__(
        self,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vit-infer")
        self._task: asyncio.Task[None] | None = None
        self._pending = 0  # images submitted and not yet answered (queued or running)
        self._incoming = 0  # images being decoded that will be submitted soon

    @property
    def depth(self) -> int:
        """Images waiting for or inside inference."""
        return self._pending

    @contextlib.contextmanager
    def incoming(self, count: int) -> Iterator[None]:
        """Announce images about to be decoded, so an open batch waits for them.

        Also the admission check: a request that would overfill the queue is refused
        (:class:`OverloadedError`) before any of its images is decoded.
        """
        if self._pending + self._incoming + count > self.max_queue:
            raise OverloadedError(f"{self._pending + self._incoming} images queued, limit {self.max_queue}")
        self._incoming += count
        try:
            yield
        finally:
            self._incoming -= count

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="vit-batcher")

    async def submit(
        self, engine: Engine, arrays: Sequence[np.ndarray], with_attention: bool = False
    ) -> list[ItemResult]:
        """Queue all images of one request (or none, raising :class:`OverloadedError`)."""
        if self._task is None:
            raise RuntimeError("Batcher.start() was not called")
        if self._pending + len(arrays) > self.max_queue:
            raise OverloadedError(f"{self._pending} images queued, limit {self.max_queue}")
        loop = asyncio.get_running_loop()
        items = [_Item(a, engine, with_attention, loop.create_future(), loop.time()) for a in arrays]
        for item in items:
            self._queue.put_nowait(item)
        self._pending += len(items)
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            self._pending -= len(items)
            for item in items:  # a cancelled request frees its queued images
                item.future.cancel()

    async def _collect(self) -> list[_Item]:
        """Wait for one image, then take more until the batch is full or its deadline passes."""
        first = await self._queue.get()
        items = [first]
        loop = asyncio.get_running_loop()
        deadline = first.enqueued + self.max_wait
        while len(items) < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0 or self._incoming <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            else:
                items.append(self._queue.get_nowait())
        return [item for item in items if not item.future.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            try:
                if items and self.on_batch is not None:
                    self.on_batch(len(items))
                # Runs of the same engine, in queue order (only a reload makes more than one).
                groups: list[list[_Item]] = []
                for item in items:
                    if groups and groups[-1][0].engine is item.engine:
                        groups[-1].append(item)
                    else:
                        groups.append([item])
                for group in groups:
                    await self._run_group(loop, group)
            except Exception as exc:  # the loop must outlive any bug: fail these requests, go on
                log.exception("batcher error")
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)

    async def _run_group(self, loop: asyncio.AbstractEventLoop, group: list[_Item]) -> None:
        engine = group[0].engine
        limit = engine.run_batch_size or len(group)
        for start in range(0, len(group), limit):
            chunk = group[start : start + limit]
            try:
                outputs = await loop.run_in_executor(
                    self._executor,
                    _infer,
                    engine,
                    [item.array for item in chunk],
                    any(item.with_attention for item in chunk),
                )
            except Exception as exc:  # a model error fails this batch's requests, never the loop
                log.exception("inference failed for a batch of %d", len(chunk))
                for item in chunk:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for row, item in enumerate(chunk):
                if not item.future.done():
                    attention = outputs.attention[row] if outputs.attention is not None else None
                    item.future.set_result(ItemResult(outputs.logits[row], attention, engine))

    async def stop(self, timeout: float = 30.0) -> None:
        """Let queued images finish (up to ``timeout``), then stop the loop and the worker thread."""
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.depth and loop.time() < deadline:
            await asyncio.sleep(0.01)  # drain: poll rather than instrument every future
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(OverloadedError("server is shutting down"))
        self._executor.shutdown(wait=True)
