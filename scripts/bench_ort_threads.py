"""onnxruntime on a CPU: threads per session against calls at once, side by side in one run.

    python scripts/bench_ort_threads.py MODEL [--rounds 2] [--seconds 3] [--batches 1 4 8]

MODEL is a `vit export` ONNX file. Four ways to spend the cores, on engines with `vit serve`'s
session options (``serve.engine``): a session with all cores' threads and one caller, the same
with two callers at once, a single-threaded session with two callers at once (how `vit serve
--instances 2` runs its batches on 2 cores), and that session with one caller. Interleaved
round by round; prints median img/s per batch size. Preprocessed zeros as input: this
measures inference only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serve import images_per_second  # noqa: E402

from serve.engine import Engine, cpu_count  # noqa: E402


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
    full = Engine(args.model, device="cpu", threads=cores)
    single = Engine(args.model, device="cpu", threads=1)
    arrays = [np.zeros(full.input_shape, np.float32)]
    modes = {
        f"{cores} threads, 1 call": (full, 1),
        f"{cores} threads, 2 calls at once": (full, 2),
        "1 thread, 2 calls at once": (single, 2),
        "1 thread, 1 call": (single, 1),
    }
    results: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for batch in args.batches:
            for mode, (engine, callers) in modes.items():
                value = images_per_second(engine, arrays, batch, callers, args.seconds)
                results.setdefault((batch, mode), []).append(value)
    print(f"{args.model.name}, {cores} cores, median img/s of {args.rounds} round(s) of {args.seconds:g} s\n")
    print("| batch | " + " | ".join(modes) + " |\n|---:|" + "---:|" * len(modes))
    for batch in args.batches:
        cells = [f"{statistics.median(results[batch, mode]):.1f}" for mode in modes]
        print(f"| {batch} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
