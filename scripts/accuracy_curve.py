"""Accuracy vs training minutes from a run's metrics.csv (``val/acc1`` with ``train/minutes``).

usage: python scripts/accuracy_curve.py runs/X/logs/version_0/metrics.csv [--target 0.9]
       python scripts/accuracy_curve.py METRICS --summary LABEL   (one table row, for sweeps)
"""

from __future__ import annotations

import argparse
import csv


def read_validations(path: str) -> list[dict[str, str]]:
    """The rows of a Lightning metrics.csv that hold a validation (``val/acc1``), in order."""
    with open(path) as handle:
        return [row for row in csv.DictReader(handle) if row.get("val/acc1")]


def read_curve(path: str) -> list[tuple[float, float]]:
    """(minutes, val top-1) per validation, in order."""
    rows = read_validations(path)
    return [(float(r["train/minutes"]), float(r["val/acc1"])) for r in rows if r.get("train/minutes")]


def summary_row(path: str, label: str) -> str:
    """``| LABEL | epochs done | last val top-1 | best val top-1 |`` for one run."""
    accuracies = [(int(r["epoch"]), float(r["val/acc1"])) for r in read_validations(path)]
    if not accuracies:
        return f"| {label} | 0 | - | - |"
    best = max(a for _, a in accuracies)
    epoch, last = accuracies[-1]
    return f"| {label} | {epoch + 1} | {100 * last:.2f}% | {100 * best:.2f}% |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("metrics")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--summary", metavar="LABEL", help="print one table row for this run instead")
    args = parser.parse_args()
    if args.summary is not None:
        print(summary_row(args.metrics, args.summary))
        return
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
