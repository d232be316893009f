"""``vit predict MODEL IMAGE|DIR…``: top-k labels per image from an ONNX file or a checkpoint.

Scores are calibrated probabilities and every image carries its OOD score and "unknown" flag,
all from :mod:`serve.trust` (as the server reports them). JSON/CSV also repeat each ``score``
as ``probability``: the old name, deprecated, kept for one release.

Preprocessing comes from the model (ONNX metadata or checkpoint), never from flags. Folders are
walked recursively for image files; a file that is missing or not an image is reported on stderr
with the reason and skipped, and the exit code is 1 when that happened (2 for usage errors).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve.metadata import MetadataError
from serve.trust import top_k
from vit.arguments import parse_or_exit_code
from vit.batches import image_batches
from vit.classifier import DEVICES, Classifier, ModelLoadError, load_classifier
from vit.folder import is_image_file


@dataclass
class FileResult:
    """One file's answer: its top-k labels and calibrated scores, OOD score and unknown flag."""

    path: str
    labels: list[str]
    scores: list[float]  # calibrated probabilities, best first
    ood_score: float | None = None  # None: the model has no OOD score
    unknown: bool = False

    @property
    def probabilities(self) -> list[float]:
        """Deprecated name of :attr:`scores` (one release)."""
        return self.scores


def expand_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given plus image files found under folders; (path, reason) for missing ones."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if is_image_file(p))
            files += found
            if not found:
                missing.append((str(path), "folder holds no image files"))
        elif path.exists():
            files.append(path)
        else:
            missing.append((str(path), "no such file"))
    return files, missing


@contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    """A rich progress bar on stderr (only on a terminal); yields ``advance(n)``."""
    if not enabled or total == 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("classifying", total=total)
        yield lambda n: bar.advance(task, n)


def predict_paths(
    classifier: Classifier,
    paths: list[Path],
    k: int = 5,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = False,
) -> tuple[list[FileResult], list[tuple[str, str]]]:
    """Top-k predictions for every decodable path, in input order, and (path, reason) failures."""
    predictions: list[FileResult] = []
    failed: list[tuple[str, str]] = []
    with progress_bar(len(paths), progress) as advance:
        for batch in image_batches(paths, classifier.preprocessing, batch_size, workers):
            failed += [(str(p), reason) for p, reason in batch.failed]
            if len(batch.items):
                verdicts = classifier.trust.apply(classifier.run(batch.images))
                for i, path in enumerate(batch.items):
                    best = top_k(verdicts.probabilities[i], classifier.labels, k)
                    predictions.append(
                        FileResult(
                            str(path),
                            [p.label for p in best],
                            [p.score for p in best],
                            verdicts.ood_score(i),
                            bool(verdicts.unknown[i]),
                        )
                    )
            advance(len(batch.items) + len(batch.failed))
    return predictions, failed


def format_predictions(predictions: list[FileResult], fmt: str, k: int) -> str:
    """``table`` (aligned text), ``json`` (a list of objects) or ``csv`` (one row per image)."""
    if fmt == "json":
        rows = [
            {
                "path": p.path,
                "predictions": [
                    {"label": label, "score": score, "probability": score}
                    for label, score in zip(p.labels, p.scores, strict=True)
                ],
                "ood_score": p.ood_score,
                "unknown": p.unknown,
            }
            for p in predictions
        ]
        return json.dumps(rows, indent=2)
    k = max((len(p.labels) for p in predictions), default=k)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        names = ("label", "score", "probability")
        writer.writerow(
            ["path"] + [f"{name}_{i}" for i in range(1, k + 1) for name in names] + ["ood_score", "unknown"]
        )
        for p in predictions:
            cells = [
                v
                for label, score in zip(p.labels, p.scores, strict=True)
                for v in (label, f"{score:.6f}", f"{score:.6f}")
            ]
            cells += [""] * (3 * (k - len(p.labels)))
            ood = "" if p.ood_score is None else f"{p.ood_score:.6g}"
            writer.writerow([p.path, *cells, ood, str(p.unknown).lower()])
        return buffer.getvalue().rstrip("\n")
    cells = [
        [p.path]
        + [f"{label} {score:.3f}" for label, score in zip(p.labels, p.scores, strict=True)]
        + [""] * (k - len(p.labels))
        + ["n/a" if p.ood_score is None else f"{p.ood_score:.4g}", "yes" if p.unknown else "no"]
        for p in predictions
    ]
    header = ["path"] + [f"top-{i}" for i in range(1, k + 1)] + ["ood_score", "unknown"]
    widths = [max(len(row[i]) for row in [header, *cells] if i < len(row)) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip() for row in [header, *cells]
    )


def report_failures(failed: list[tuple[str, str]]) -> None:
    for path, reason in failed:
        print(f"vit predict: skipped {path}: {reason}", file=sys.stderr)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``vit predict`` and ``vit eval``."""
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when available")
    parser.add_argument(
        "--threads",
        type=int,
        help="intra-op threads (default: one per usable core for onnxruntime, torch's default)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="ONNX file from `vit export`, or a `vit fit` checkpoint")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table")
    add_runtime_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    if args.top_k < 1 or args.batch_size < 1:
        print("vit predict: --top-k and --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        classifier = load_classifier(args.model, args.device, args.threads)
    except (ModelLoadError, MetadataError) as exc:
        print(f"vit predict: {exc}", file=sys.stderr)
        return 2
    files, missing = expand_inputs(args.inputs)
    progress = not args.no_progress and sys.stderr.isatty()
    predictions, bad = predict_paths(classifier, files, args.top_k, args.batch_size, args.workers, progress)
    if predictions or args.format != "table":
        print(format_predictions(predictions, args.format, args.top_k))
    failed = missing + bad
    report_failures(failed)
    if failed:
        total = len(files) + len(missing)
        print(f"vit predict: {len(failed)} of {total} input(s) failed", file=sys.stderr)
    return 1 if failed or not predictions else 0
