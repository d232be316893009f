"""Shared fakes for the server tests: an engine that can block, and the helpers around it.

The fake engine blocks its first call on an event, so later submissions pile up in the queue
deterministically (no sleeps); batch sizes are then read from what the engine saw.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import numpy as np

from serve.batcher import Batcher
from serve.engine import Outputs


class FakeEngine:
    """Logits = [value, -value] of each image's scalar; records batch sizes; can block."""

    run_batch_size: int | None = None

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[float]] = []
        self.instances: list[int | None] = []  # the session each call asked for
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = fail

    def infer(self, batch: np.ndarray, with_attention: bool = False, instance: int | None = None) -> Outputs:
        self.entered.set()
        self.gate.wait(10)
        self.calls.append([float(x) for x in batch[:, 0]])
        self.instances.append(instance)
        if self.fail:
            raise RuntimeError("model exploded")
        logits = np.stack([batch[:, 0], -batch[:, 0]], axis=1)
        attention = np.repeat(batch[:, :1, None], 2, axis=2) if with_attention else None
        return Outputs(logits=logits, attention=attention)


def item(value: float) -> np.ndarray:
    return np.array([value], np.float32)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def wait_entered(engine: FakeEngine) -> None:
    await asyncio.to_thread(engine.entered.wait, 10)


async def wait_until(condition: Any) -> None:
    """Yield to the loop until ``condition()`` holds (a condition, never a count of turns)."""
    while not condition():
        await asyncio.sleep(0)


async def wait_taken(batcher: Batcher, depth: int) -> None:
    """Until ``depth`` images are submitted and none is left in the queue: a worker took them."""
    await wait_until(lambda: not batcher._queue.qsize() and batcher.depth >= depth)


async def wait_queued(batcher: Batcher, depth: int) -> None:
    """Until ``depth`` images are submitted (queued or running)."""
    await wait_until(lambda: batcher.depth >= depth)
