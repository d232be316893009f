"""``vit eval MODEL DATA_DIR``: top-1/top-5, per-class accuracy, confusion-matrix PNG, JSON report.

MODEL is an ONNX file or a checkpoint; both go through the same decoding, preprocessing and
batching (:mod:`vit.batches`), so their numbers are directly comparable. DATA_DIR is read like
``vit fit`` reads it (:func:`vit.folder.discover`): ``--split val`` of a flat class-folder root
is the same held-out split training validated on (same ``--val-fraction`` and ``--seed``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.engine import top_k
from serve.metadata import MetadataError
from vit.arguments import parse_or_exit_code
from vit.atomic import write_atomic
from vit.batches import image_batches
from vit.classifier import Classifier, ModelLoadError, load_classifier
from vit.folder import DataError, Sample, discover
from vit.predict import add_runtime_arguments, progress_bar
from vit.report import (
    format_per_class_table,
    per_class_accuracy,
    write_confusion_matrix_png,
)

SPLITS = ("train", "val", "test", "all")


@dataclass
class EvalResult:
    labels: list[str]
    confusion: np.ndarray  # [true, predicted] counts over the model's classes
    top5_correct: int
    top5_k: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return float(np.trace(self.confusion) / max(self.n, 1))

    @property
    def top5(self) -> float:
        return self.top5_correct / max(self.n, 1)

    def to_json(self) -> dict[str, Any]:
        accuracy = per_class_accuracy(self.confusion)
        per_class = {
            name: {
                "n": int(self.confusion[i].sum()),
                "correct": int(self.confusion[i, i]),
                "accuracy": None if np.isnan(accuracy[i]) else float(accuracy[i]),
            }
            for i, name in enumerate(self.labels)
        }
        return {
            "n": self.n,
            "top1": self.top1,
            "top5": self.top5,
            "top5_k": self.top5_k,
            "labels": self.labels,
            "per_class": per_class,
            "confusion_matrix": self.confusion.astype(int).tolist(),
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
        }


def select_samples(
    root: Path, split: str, labels: list[str], val_fraction: float = 0.1, seed: int = 0
) -> list[Sample]:
    """(path, model class index) for ``split`` of ``root``; data classes must be model classes."""
    splits = discover(root, val_fraction=val_fraction, seed=seed)
    unknown = [name for name in splits.classes if name not in labels]
    if unknown:
        raise DataError(f"{root}: class folder(s) the model does not know: {', '.join(unknown)}")
    chosen = splits.train + splits.val + splits.test if split == "all" else getattr(splits, split)
    if not chosen:
        raise DataError(f"{root}: the {split} split is empty (no {root / split} folder?)")
    index = [labels.index(name) for name in splits.classes]
    return [(path, index[label]) for path, label in chosen]


def evaluate(
    classifier: Classifier,
    samples: list[Sample],
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = False,
) -> EvalResult:
    """Run every sample through ``classifier``; undecodable files are skipped and listed."""
    n = len(classifier.labels)
    k = min(5, n)
    # numpy rather than torchmetrics: evaluating an ONNX file must not need torch
    confusion = np.zeros((n, n), dtype=np.int64)
    top5_correct = 0
    skipped: list[tuple[str, str]] = []
    with progress_bar(len(samples), progress) as advance:
        batches = image_batches(
            samples, classifier.preprocessing, batch_size, workers, path_of=lambda s: s[0]
        )
        for batch in batches:
            skipped += [(path, reason) for (path, _), reason in batch.failed]
            if batch.items:
                logits = classifier.logits(batch.images)
                targets = np.array([label for _, label in batch.items])
                np.add.at(confusion, (targets, logits.argmax(-1)), 1)
                top5_correct += sum(
                    int(target) in {p.index for p in top_k(row, classifier.labels, k)}
                    for row, target in zip(logits, targets, strict=True)
                )
            advance(len(batch.items) + len(batch.failed))
    return EvalResult(list(classifier.labels), confusion, top5_correct, k, skipped)


def write_report(result: EvalResult, out_dir: Path, extra: dict[str, Any]) -> tuple[Path, Path]:
    """``report.json`` and ``confusion_matrix.png`` in ``out_dir``, each written atomically."""
    report = out_dir / "report.json"
    picture = out_dir / "confusion_matrix.png"
    write_atomic(report, (json.dumps({**extra, **result.to_json()}, indent=2) + "\n").encode())
    write_confusion_matrix_png(result.confusion, result.labels, picture)
    return report, picture


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit eval", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="ONNX file from `vit export`, or a `vit fit` checkpoint")
    parser.add_argument("data", type=Path, help="image folder laid out like the training data")
    parser.add_argument("--split", choices=SPLITS, default="val")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as in training (flat layout)")
    parser.add_argument("--seed", type=int, default=0, help="as in training (flat layout)")
    parser.add_argument("-o", "--output-dir", type=Path, help="where to write (default: ./eval-MODELNAME)")
    add_runtime_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        classifier = load_classifier(args.model, args.device, args.threads)
        samples = select_samples(args.data, args.split, classifier.labels, args.val_fraction, args.seed)
    except (ModelLoadError, MetadataError, DataError) as exc:
        print(f"vit eval: {exc}", file=sys.stderr)
        return 2
    print(f"evaluating {classifier.description} on {len(samples)} images ({args.split} split of {args.data})")
    progress = not args.no_progress and sys.stderr.isatty()
    result = evaluate(classifier, samples, args.batch_size, args.workers, progress)
    for path, reason in result.skipped:
        print(f"vit eval: skipped {path}: {reason}", file=sys.stderr)
    out_dir = args.output_dir or Path(f"eval-{args.model.name.split('.')[0]}")
    extra = {"model": str(args.model), "data": str(args.data), "split": args.split}
    report, picture = write_report(result, out_dir, extra)
    print(format_per_class_table(result.confusion, result.labels, title=f"{args.split} per-class accuracy"))
    print(f"top-1 {100 * result.top1:.2f}%  top-{result.top5_k} {100 * result.top5:.2f}%  n={result.n}")
    print(f"report: {report}\nconfusion matrix: {picture}")
    if result.skipped:
        print(f"vit eval: {len(result.skipped)} file(s) skipped (listed in the report)", file=sys.stderr)
    return 1 if result.skipped or result.n == 0 else 0
