"""Accuracy vs training minutes from a run's metrics.csv (``val/acc1`` with ``train/minutes``).

usage: python scripts/accuracy_curve.py runs/X/logs/version_0/metrics.csv [--target 0.9]
"""

from __future__ import annotations

import argparse
import csv


def read_curve(path: str) -> list[tuple[float, float]]:
    """(minutes, val top-1) per validation, in order."""
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    curve = []
    for row in rows:
        if row.get("val/acc1") and row.get("train/minutes"):
            curve.append((float(row["train/minutes"]), float(row["val/acc1"])))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("metrics")
    parser.add_argument("--target", type=float, default=0.9)
    args = parser.parse_args()
    curve = read_curve(args.metrics)
    print("| minutes | val top-1 |\n|---:|---:|")
    for minutes, accuracy in curve:
        print(f"| {minutes:6.2f} | {100 * accuracy:5.2f}% |")
    reached = next((m for m, a in curve if a >= args.target), None)
    best = max((a for _, a in curve), default=float("nan"))
    print(
        f"best {100 * best:.2f}%; time to {100 * args.target:.0f}%: "
        + (f"{reached:.2f} min" if reached is not None else "not reached")
    )


if __name__ == "__main__":
    main()
