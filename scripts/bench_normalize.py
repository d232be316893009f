"""Preprocessing's normalisation against the textbook expression, side by side on one image.

    python scripts/bench_normalize.py [--size 224] [--rounds 5]

``Preprocessing.normalize`` (uint8 HWC -> float32 CHW, one multiply and one subtract per channel
in place) against ``((a / 255 - mean) / std).transpose(2, 0, 1)``; prints the best time of each
over ``--rounds`` timeit rounds, interleaved, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.preprocess import Preprocessing  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    pre = Preprocessing(input_size=(args.size, args.size))
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)
    mean, std = np.array(pre.mean), np.array(pre.std)
    ways = {
        "Preprocessing.normalize": lambda: pre.normalize(image),
        "textbook": lambda: ((image / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32),
    }
    np.testing.assert_allclose(ways["textbook"](), ways["Preprocessing.normalize"](), atol=1e-5)
    best = {name: float("inf") for name in ways}
    for _ in range(args.rounds):  # interleaved, so a busy stretch of the machine hits both
        for name, way in ways.items():
            runs, seconds = timeit.Timer(way).autorange()
            best[name] = min(best[name], seconds / runs)
    for name, seconds in best.items():
        print(f"{name:<24} {seconds * 1e3:7.3f} ms")
    ratio = best["textbook"] / best["Preprocessing.normalize"]
    print(f"textbook / Preprocessing.normalize = {ratio:.1f}x ({args.size} px)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
