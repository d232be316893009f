"""Which of the exported files to deploy: the fastest whose accuracy stays within 0.5 pt of fp32.

Speed is measured at export, on this machine, interleaving the files round by round so that load
from other processes hits them alike; the ratio to the fp32 file is what the report gives (the
absolute numbers depend on the machine and its load). Accuracy is the export check's: top-1 on
the labelled check images, or, without labels, top-1 agreement with the fp32 file (an image
whose label changes moves the accuracy by at most that image).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_ACCURACY_DROP = 0.005  # 0.5 percentage points of top-1, the issue-17 budget for int8
MIN_SPEEDUP = 1.05  # below this a faster file is within the noise of a shared machine
TIMING_BATCH = 32  # the server's largest batch (serve.settings max_batch_size default)
CPU_PRECISIONS = ("fp32", "int8")  # fp16 is for GPU providers: slow on CPU, never recommended here


def time_files(
    paths: list[Path], images: np.ndarray, rounds: int = 3, seconds: float = 0.3
) -> dict[Path, float]:
    """Images per second of each file (median over ``rounds`` interleaved windows of >= ``seconds``)."""
    from vit.classifier import open_session

    batch = np.ascontiguousarray(images[:TIMING_BATCH])
    sessions = {path: open_session(path, device="cpu") for path in paths}
    for session in sessions.values():  # first call allocates
        session.run(None, {session.get_inputs()[0].name: batch})
    speeds: dict[Path, list[float]] = {path: [] for path in paths}
    for _ in range(rounds):
        for path, session in sessions.items():
            feed = {session.get_inputs()[0].name: batch}
            calls, start = 0, time.perf_counter()
            while not calls or time.perf_counter() - start < seconds:
                session.run(None, feed)
                calls += 1
            speeds[path].append(calls * len(batch) / (time.perf_counter() - start))
    return {path: statistics.median(values) for path, values in speeds.items()}


def accuracy_drop(candidate: Any, fp32: Any) -> tuple[float, str]:
    """(drop in top-1 against the fp32 file, how it was measured) for two FileReports."""
    if candidate.comparison.accuracy is not None and fp32.comparison.accuracy is not None:
        drop = fp32.comparison.accuracy - candidate.comparison.accuracy
        return drop, (
            f"accuracy {100 * -drop + 0.0:+.2f} pt ({100 * candidate.comparison.accuracy:.2f}% vs "
            f"{100 * fp32.comparison.accuracy:.2f}%)"
        )
    drop = 1.0 - candidate.comparison.top1_agreement
    return drop, f"top-1 agreement with fp32 {100 * candidate.comparison.top1_agreement:.2f}% (unlabelled)"


def within_budget(candidate: Any, fp32: Any) -> bool:
    return accuracy_drop(candidate, fp32)[0] <= MAX_ACCURACY_DROP + 1e-9


def fastest(candidates: list[Any], reference: Any) -> Any:
    """The fastest of ``candidates`` within the accuracy budget of ``reference`` (None if none is)."""
    eligible = [c for c in candidates if c.images_per_second and within_budget(c, reference)]
    return max(eligible, key=lambda c: c.images_per_second, default=None)


@dataclass
class Recommendation:
    file: Any  # the FileReport to deploy
    line: str  # what `vit export` prints last


def recommendation(report: Any) -> Recommendation:
    """The file to deploy among the report's fp32 and int8 files, and the reason in one line."""
    fp32 = report.files[0]
    n = len(report.inputs.images)
    cpu = [f for f in report.files if f.precision in CPU_PRECISIONS]
    best = fastest([f for f in cpu if f is not fp32], fp32)
    if best is None or not fp32.images_per_second:
        others = [f for f in cpu if f is not fp32]
        why = "the only CPU file written" if not others else "no other file is both faster and accurate"
        if others and not fp32.images_per_second:
            why = "speed not measured"
        elif others:
            _, measured = accuracy_drop(others[0], fp32)
            why += f" ({others[0].path.name}: {measured})"
        chosen, reason = fp32, why
    else:
        ratio = best.images_per_second / fp32.images_per_second
        _, measured = accuracy_drop(best, fp32)
        if ratio < MIN_SPEEDUP:
            chosen = fp32
            reason = f"{best.path.name} is only {ratio:.2f}x its speed here ({measured})"
        else:
            chosen = best
            reason = (
                f"{ratio:.2f}x the fp32 file's images/s at batch {min(n, TIMING_BATCH)} on this machine, "
                f"{measured} on {n} check images"
            )
    return Recommendation(chosen, f"deploy {chosen.path.name}: {reason}; serve it: vit serve {chosen.path}")
