"""Dynamic batching: requests queue; ``instances`` workers take batches and run them on the model.

A worker that is free takes the oldest queued image and closes its batch when it holds the
engine's ``run_batch_size`` images (``max_batch_size`` when unset; on CPUs small batches are
faster per image), or ``max_wait_ms`` after that image was queued (Triton's
``max_queue_delay``), or at once when no other image is on its way (being decoded, see
:meth:`Batcher.incoming`): a lone request never waits for company. A one-image request that
finds the batcher idle skips the queue altogether (:meth:`Batcher.alone`): decoding and
inference run in one call on an inference thread, saving the hand-offs between the
preprocessing pool, the event loop, a worker and the inference thread that batching needs.
Workers take no image while such a call holds the cores, so requests arriving meanwhile
queue up and run as one batch after it.

While batches run the queue fills, so under load batches grow on their own; images that are
ready when several workers are free are shared out between them. ``instances``
workers (Triton's ``instance_group`` count) run that many batches at the same time, each on its
own thread and its instance's session (:meth:`serve.engine.Engine.warmup`), never on the event
loop: on a 2-core CPU two single-threaded calls at once keep both cores busy with no
thread-pool hand-offs (docs/BENCHMARKS.md). Each queued image carries the engine it was
preprocessed for, so a hot reload never mixes models inside a batch and requests already
queued finish on the engine they started with.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from serve.engine import Engine, Outputs

log = logging.getLogger("serve.batcher")


class HasArray(Protocol):
    array: np.ndarray


P = TypeVar("P", bound=HasArray)


class OverloadedError(RuntimeError):
    """The queue is full: the caller should answer 503 with ``Retry-After``."""


@dataclass
class ItemResult:
    """One image's raw model outputs and the engine that produced them."""

    logits: np.ndarray
    attention: np.ndarray | None
    engine: Engine
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other outputs (OOD inputs)


@dataclass
class _Item:
    array: np.ndarray
    engine: Engine
    with_attention: bool
    future: asyncio.Future[ItemResult]
    enqueued: float


def _fail(items: list[_Item], exc: BaseException) -> None:
    """Fail the requests of these images that are still waiting."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)


def _row(outputs: Outputs, row: int, engine: Engine) -> ItemResult:
    """One image's share of a batch's outputs."""
    attention = outputs.attention[row] if outputs.attention is not None else None
    return ItemResult(outputs.logits[row], attention, engine, {k: v[row] for k, v in outputs.extra.items()})


def _infer(engine: Engine, arrays: list[np.ndarray], with_attention: bool, instance: int) -> Outputs:
    # Stacking a large batch is a ~20 MB copy: do it here, off the event loop.
    return engine.infer(np.stack(arrays), with_attention=with_attention, instance=instance)


class Batcher:
    """Queue images, run them in batches on ``instances`` worker threads, route results to their futures."""

    def __init__(
        self,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        instances: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if instances < 1:
            raise ValueError(f"instances must be >= 1, got {instances}")
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.instances = instances
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        # Images taken from the queue that belong to the next batch (another engine): they are
        # older than anything queued, so they go first.
        self._held: deque[_Item] = deque()
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="vit-infer")
        self._tasks: list[asyncio.Task[None]] = []
        self._pending = 0  # images submitted and not yet answered (queued or running)
        self._incoming = 0  # images being decoded that will be submitted soon
        self._collecting = 0  # workers not running a batch (free to take images)
        # Set while no :meth:`alone` call runs. That call uses all the cores, so workers take no
        # image meanwhile and the queue fills: requests arriving during it form one batch after.
        self._alone_done = asyncio.Event()
        self._alone_done.set()

    @property
    def depth(self) -> int:
        """Images waiting for or inside inference."""
        return self._pending

    def _admit(self, count: int) -> None:
        """The one queue limit: refuse ``count`` more images when they would overfill the queue."""
        if self._pending + count > self.max_queue:
            raise OverloadedError(f"{self._pending + count} images would be queued, limit {self.max_queue}")

    def _require_started(self) -> None:
        if not self._tasks:
            raise RuntimeError("Batcher.start() was not called")

    def idle(self) -> bool:
        """Nothing queued, running or being decoded: a request now would be a batch of its own."""
        return self._pending == 0 and self._incoming == 0

    async def alone(
        self, engine: Engine, prepare: Callable[[], P], with_attention: bool = False
    ) -> tuple[P, ItemResult]:
        """Decode (``prepare()``) and infer one image in a single call on an inference thread.

        For a request that finds the batcher :meth:`idle`; it counts as a batch of one and keeps
        the batcher busy meanwhile, so requests arriving during it are queued and batched.
        """
        self._require_started()

        def run() -> tuple[P, Outputs]:
            prepared = prepare()
            return prepared, engine.infer(prepared.array[None], with_attention=with_attention)

        loop = asyncio.get_running_loop()
        self._pending += 1
        self._alone_done.clear()
        try:
            prepared, outputs = await loop.run_in_executor(self._executor, run)
        finally:
            self._pending -= 1
            self._alone_done.set()
        if self.on_batch is not None:
            self.on_batch(1)
        return prepared, _row(outputs, 0, engine)

    @contextlib.contextmanager
    def incoming(self, count: int) -> Iterator[None]:
        """Announce images about to be decoded, so an open batch waits for them.

        Also the admission check: a request that would overfill the queue is refused
        (:class:`OverloadedError`) before any of its images is decoded.
        """
        self._admit(count + self._incoming)
        self._incoming += count
        try:
            yield
        finally:
            self._incoming -= count

    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._work(i), name=f"vit-batcher-{i}") for i in range(self.instances)
            ]

    async def submit(
        self, engine: Engine, arrays: Sequence[np.ndarray], with_attention: bool = False
    ) -> list[ItemResult]:
        """Queue all images of one request (or none, raising :class:`OverloadedError`)."""
        self._require_started()
        self._admit(len(arrays))
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

    async def _next(self, timeout: float | None = None) -> _Item:
        """The oldest image not yet taken; ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        if self._held:
            return self._held.popleft()
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _collect(self, items: list[_Item]) -> None:
        """Wait for one image, then take more of the same engine until the batch is full or due.

        Images are appended to ``items`` as they are taken, so a worker cancelled meanwhile
        (shutdown) still knows which requests it holds.
        """
        while True:
            await self._alone_done.wait()
            first = await self._next()
            if self._alone_done.is_set():
                break
            # An idle-path call began while this worker waited: the cores are busy, so put the
            # image back (in age order) and let the batch grow until they are free.
            bisect.insort(self._held, first, key=lambda queued: queued.enqueued)
        items.append(first)
        loop = asyncio.get_running_loop()
        deadline = first.enqueued + self.max_wait
        limit = min(first.engine.run_batch_size or self.max_batch_size, self.max_batch_size)
        if self.instances > 1:
            # Share what is ready or on its way with the other free workers: a burst of 8 runs
            # as 4 + 4 on two instances, not 8 on one while the other idles (a lower p99:
            # docs/BENCHMARKS.md, serving).
            ready = 1 + len(self._held) + self._queue.qsize() + self._incoming
            limit = min(limit, -(-ready // self._collecting))
        while len(items) < limit:
            waiting = not self._held and self._queue.empty()
            remaining = deadline - loop.time()
            if waiting and (remaining <= 0 or self._incoming <= 0):
                break
            try:
                item = await self._next(remaining if waiting else 0.0)
            except asyncio.TimeoutError:
                break
            if item.engine is not first.engine:  # a reload: this image starts the next batch
                self._held.appendleft(item)
                break
            items.append(item)

    async def _work(self, instance: int) -> None:
        """Worker ``instance``: collect batches and run them on that instance's session."""
        loop = asyncio.get_running_loop()
        while True:
            items: list[_Item] = []
            try:
                self._collecting += 1
                try:
                    await self._collect(items)
                finally:
                    self._collecting -= 1
                items = [item for item in items if not item.future.done()]
                if not items:
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(items))
                await self._run(loop, items, instance)
            except asyncio.CancelledError:  # shutdown: the images this worker holds are not run
                _fail(items, OverloadedError("server is shutting down"))
                raise
            except Exception as exc:  # a worker must outlive any bug: fail these requests, go on
                log.exception("batcher error")
                _fail(items, exc)

    async def _run(self, loop: asyncio.AbstractEventLoop, items: list[_Item], instance: int) -> None:
        engine = items[0].engine
        try:
            outputs = await loop.run_in_executor(
                self._executor,
                _infer,
                engine,
                [item.array for item in items],
                any(item.with_attention for item in items),
                instance,
            )
        except Exception as exc:  # a model error fails this batch's requests, never the worker
            log.exception("inference failed for a batch of %d", len(items))
            _fail(items, exc)
            return
        for row, item in enumerate(items):
            if not item.future.done():
                item.future.set_result(_row(outputs, row, engine))

    async def stop(self, timeout: float = 30.0) -> None:
        """Let queued images finish (up to ``timeout``), then stop the workers and their threads."""
        if not self._tasks:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.depth and loop.time() < deadline:
            await asyncio.sleep(0.01)  # drain: poll rather than instrument every future
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        leftovers = list(self._held)
        self._held.clear()
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        _fail(leftovers, OverloadedError("server is shutting down"))
        self._executor.shutdown(wait=True)
