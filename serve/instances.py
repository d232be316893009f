"""Warm-up: the instances' sessions, the batch-size probe and the arena release, before traffic.

Triton gives each ``instance_group`` instance its own session; so does this module on CPUs,
with ``threads // instances`` intra-op threads each, so that calls running at once split the
cores instead of contending for one thread pool.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from serve.engine import Engine

log = logging.getLogger("serve.engine")
PROBE_SIZES = (1, 2, 4, 8, 16, 32, 64)


def open_instance_sessions(engine: Engine, instances: int) -> None:
    """Sessions for ``instances`` > 1 concurrent calls on a CPU (once per engine)."""
    if instances <= 1 or engine.device != "cpu" or engine.instance_sessions:
        return
    providers = engine.session.get_providers()
    engine.instance_threads = max(1, engine.threads // instances)
    # A single-threaded session has no thread pool to contend for: calls at once each run on
    # their caller's thread, so one such session (one copy of the weights) serves all.
    count = instances if engine.instance_threads > 1 else 1
    engine.instance_sessions = [engine.open_session(engine.instance_threads, providers) for _ in range(count)]


def warm_up(engine: Engine, max_batch_size: int, run_batch_size: int = 0, instances: int = 1) -> None:
    """Open the instances' sessions, allocate arenas and pick kernels; settle ``run_batch_size``.

    ``run_batch_size`` 0 means: on CPU, time batch sizes 1..max with ``instances`` calls
    running at once (as the batcher runs them) and keep the smallest within 5% of the lowest
    time per image (less latency); on CUDA, the whole batch. On CPUs large batches often run
    slower per image than small ones (activations leave the caches).
    """
    open_instance_sessions(engine, instances)
    largest = min(max_batch_size, engine.static_batch or max_batch_size)
    for instance in (None, *range(len(engine.instance_sessions))):  # every session, all-threads first
        for size in sorted({1, largest}):
            batch = np.zeros((size, *engine.input_shape), np.float32)
            engine.infer(batch, with_attention=engine.has_attention, instance=instance)
    if engine.static_batch:
        engine.run_batch_size = engine.static_batch
    elif run_batch_size > 0:
        engine.run_batch_size = min(run_batch_size, max_batch_size)
    elif engine.device == "cuda":
        engine.run_batch_size = max_batch_size
    else:
        engine.run_batch_size = fastest_batch(engine, max_batch_size, instances)
    release_arena(engine)


def release_arena(engine: Engine) -> None:
    """Hand back the memory the warm-up's largest batches took: onnxruntime's arena keeps its
    peak otherwise (docs/SERVING.md, memory)."""
    options = ort.RunOptions()
    devices = "cpu:0;gpu:0" if engine.device == "cuda" else "cpu:0"
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", devices)
    batch = np.zeros((engine.static_batch or 1, *engine.input_shape), engine.input_dtype)
    for session in (engine.session, *engine.instance_sessions):
        session.run([engine.logits_name], {engine.input_name: batch}, options)


def fastest_batch(engine: Engine, max_batch_size: int, instances: int) -> int:
    """The batch size with the lowest time per image, ``instances`` calls at once."""
    sizes = [s for s in PROBE_SIZES if s <= max_batch_size]
    batches = {size: np.zeros((size, *engine.input_shape), np.float32) for size in sizes}
    per_image = dict.fromkeys(sizes, float("inf"))

    # The calls of a round start together: without this an executor thread that finished
    # early would take the next call too, timing one call at a time instead of `instances`.
    start_together = threading.Barrier(instances)

    def repeat(size: int, times: int, instance: int) -> None:
        start_together.wait(timeout=60)
        for _ in range(times):
            engine.infer(batches[size], instance=instance)

    with ThreadPoolExecutor(max_workers=instances, thread_name_prefix="vit-probe") as callers:
        for _ in range(2):  # interleaved rounds, best of each: a passing neighbour skews one size less
            for size in sizes:
                engine.infer(batches[size], instance=0)
                repeats = max(1, 16 // size)
                start = time.perf_counter()
                for done in [callers.submit(repeat, size, repeats, i) for i in range(instances)]:
                    done.result()
                seconds = (time.perf_counter() - start) / (instances * repeats * size)
                per_image[size] = min(per_image[size], seconds)
    return choose_batch(per_image)


def choose_batch(per_image: dict[int, float]) -> int:
    """The smallest size within 5% of the lowest time per image (less latency for the same speed)."""
    best = min(per_image.values())
    chosen = min(size for size, seconds in per_image.items() if seconds <= best * 1.05)
    timings = {size: round(seconds * 1e3, 2) for size, seconds in per_image.items()}
    log.info("batch size %d runs fastest per image (ms per image: %s)", chosen, timings)
    return chosen
