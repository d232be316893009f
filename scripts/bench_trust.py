"""What the trust step costs: a file without OOD score against the same weights with it, plus Trust.apply.

    python scripts/bench_trust.py PLAIN.onnx WITH_OOD.onnx [--batch 32] [--rounds 30]

Both files are run on the same random batch, interleaved round by round (so drift in the
machine's load hits both alike); the medians and their ratio are printed (docs/TRUST.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from serve.engine import Engine
from serve.trust import Trust


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plain")
    parser.add_argument("with_ood")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    engines = [
        Engine(args.plain, device="cpu", threads=args.threads),
        Engine(args.with_ood, device="cpu", threads=args.threads),
    ]
    trusts = [Trust.from_metadata(e.metadata) for e in engines]
    batch = np.random.default_rng(0).normal(size=(args.batch, *engines[0].input_shape)).astype(np.float32)
    names = [t.output_names for t in trusts]
    times: list[list[float]] = [[], [], []]
    for round_ in range(args.rounds + 3):
        for i, (engine, trust) in enumerate(zip(engines, trusts, strict=True)):
            start = time.perf_counter()
            values = engine.session.run(names[i], {engine.input_name: batch})
            verdicts = trust.apply(dict(zip(names[i], values, strict=True)))
            elapsed = time.perf_counter() - start
            if round_ >= 3:  # the first rounds warm the arenas
                times[i].append(elapsed)
            if i == 1 and round_ >= 3:
                start = time.perf_counter()
                trust.apply(dict(zip(names[i], values, strict=True)))
                times[2].append(time.perf_counter() - start)
        assert verdicts.ood_scores is not None, f"{args.with_ood} has no OOD score"
    plain, ood, apply = (statistics.median(t) * 1e3 for t in times)
    print(f"batch {args.batch}, {args.rounds} rounds, median ms per batch (run + Trust.apply):")
    print("| file | ms/batch | images/s | ratio |\n|---|---|---|---|")
    print(f"| plain (no OOD output) | {plain:.3f} | {args.batch / plain * 1e3:.0f} | 1.000 |")
    print(
        f"| with in-graph Mahalanobis + flag | {ood:.3f} | {args.batch / ood * 1e3:.0f} | {plain / ood:.3f} |"
    )
    print(f"Trust.apply alone: {apply:.4f} ms/batch ({100 * apply / ood:.2f}% of the batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
