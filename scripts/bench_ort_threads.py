"""onnxruntime on a CPU: threads per session against calls at once, side by side in one run.

    python scripts/bench_ort_threads.py MODEL [--rounds 2] [--seconds 3] [--batches 1 4 8]

Four ways to spend the cores (sessions with `vit serve`'s options, ``serve.engine``): a session
with all cores' threads and one caller, the same with two callers at once, a single-threaded
session with two callers at once (how `vit serve --instances 2` runs its batches on 2 cores),
and that session with one caller. Interleaved round by round; prints median img/s per batch size.
Preprocessed zeros as input: this measures inference only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.engine import cpu_count, session_options  # noqa: E402


def images_per_second(
    session: ort.InferenceSession, callers: int, batch: np.ndarray, seconds: float
) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: batch})
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def call(index: int) -> None:
        while time.perf_counter() < stop:
            session.run(None, {name: batch})
            counts[index] += len(batch)

    start = time.perf_counter()
    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args(argv)
    cores = cpu_count()
    providers = ["CPUExecutionProvider"]
    full = ort.InferenceSession(str(args.model), session_options(cores), providers=providers)
    single = ort.InferenceSession(str(args.model), session_options(1), providers=providers)
    shape = [d if isinstance(d, int) else 1 for d in full.get_inputs()[0].shape[1:]]
    modes = {
        f"{cores} threads, 1 call": (full, 1),
        f"{cores} threads, 2 calls at once": (full, 2),
        "1 thread, 2 calls at once": (single, 2),
        "1 thread, 1 call": (single, 1),
    }
    results: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for batch_size in args.batches:
            batch = np.zeros((batch_size, *shape), np.float32)
            for mode, (session, callers) in modes.items():
                value = images_per_second(session, callers, batch, args.seconds)
                results.setdefault((batch_size, mode), []).append(value)
    print(f"{args.model.name}, {cores} cores, median img/s of {args.rounds} round(s) of {args.seconds:g} s\n")
    print("| batch | " + " | ".join(modes) + " |\n|---:|" + "---:|" * len(modes))
    for batch_size in args.batches:
        cells = [f"{statistics.median(results[batch_size, mode]):.1f}" for mode in modes]
        print(f"| {batch_size} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
