"""``vit eval MODEL DATA_DIR``: top-1/top-5, per-class accuracy, calibration, confusion matrix, JSON report.

Calibration is reported before (T = 1) and after the model's temperature: top-1, NLL, Brier and
ECE (15 bins), with a reliability diagram. ``--ood OTHER_DIR`` also scores every image of
OTHER_DIR and reports how well the model's OOD score tells them from DATA_DIR's split (AUROC,
FPR at 95% TPR).

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

from serve.metadata import MetadataError
from serve.trust import msp_score, softmax, top_k
from vit.arguments import parse_or_exit_code
from vit.atomic import write_atomic
from vit.batches import image_batches
from vit.calibrate import before_after, reliability, write_reliability_png
from vit.classifier import Classifier, ModelLoadError, load_classifier
from vit.folder import DataError, Sample, discover, is_image_file
from vit.ood import acceptance_threshold, auroc, fpr_at_95
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
    logits: np.ndarray | None = None  # [n, classes]
    targets: np.ndarray | None = None  # [n]
    temperature: float = 1.0
    ood_scores: np.ndarray | None = None  # [n], None when the model has no OOD score
    ood: dict[str, Any] | None = None  # set by :func:`evaluate_ood`

    @property
    def calibration(self) -> dict[str, Any] | None:
        """Metrics at T = 1 ("before") and at the model's temperature ("after")."""
        if self.logits is None or not len(self.logits):
            return None
        return {"temperature": self.temperature, **before_after(self.logits, self.targets, self.temperature)}

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
        calibration = self.calibration
        after = calibration["after"] if calibration else {}
        numbers = {
            "ece": after.get("ece"),
            "ece_uncalibrated": calibration["before"]["ece"] if calibration else None,
            "nll": after.get("nll"),
            "brier": after.get("brier"),
        }
        ood = {}
        if self.ood is not None:
            ood = {"ood_auroc": self.ood["auroc"], "ood_fpr95": self.ood["fpr95"], "ood": self.ood}
        return {
            "n": self.n,
            "top1": self.top1,
            **numbers,
            **ood,
            "calibration": calibration,
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
    logits_parts, target_parts, score_parts = [], [], []
    with progress_bar(len(samples), progress) as advance:
        batches = image_batches(
            samples, classifier.preprocessing, batch_size, workers, path_of=lambda s: s[0]
        )
        for batch in batches:
            skipped += [(path, reason) for (path, _), reason in batch.failed]
            if batch.items:
                outputs = classifier.run(batch.images)
                verdicts = classifier.trust.apply(outputs)
                logits = np.asarray(outputs["logits"], np.float32)
                targets = np.array([label for _, label in batch.items])
                np.add.at(confusion, (targets, logits.argmax(-1)), 1)
                top5_correct += sum(
                    int(target) in {p.index for p in top_k(row, classifier.labels, k)}
                    for row, target in zip(verdicts.probabilities, targets, strict=True)
                )
                logits_parts.append(logits)
                target_parts.append(targets)
                if verdicts.ood_scores is not None:
                    score_parts.append(verdicts.ood_scores)
            advance(len(batch.items) + len(batch.failed))
    return EvalResult(
        list(classifier.labels),
        confusion,
        top5_correct,
        k,
        skipped,
        np.concatenate(logits_parts) if logits_parts else np.zeros((0, n), np.float32),
        np.concatenate(target_parts) if target_parts else np.zeros(0, np.int64),
        classifier.trust.temperature,
        np.concatenate(score_parts) if score_parts else None,
    )


def ood_scores(
    classifier: Classifier, paths: list[Path], batch_size: int = 32, workers: int = 2
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The model's OOD score of every decodable file (1 - top calibrated probability when it has none)."""
    scores: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    for batch in image_batches(paths, classifier.preprocessing, batch_size, workers):
        failed += [(str(p), reason) for p, reason in batch.failed]
        if batch.items:
            verdicts = classifier.trust.apply(classifier.run(batch.images))
            scores.append(
                verdicts.ood_scores if verdicts.ood_scores is not None else msp_score(verdicts.probabilities)
            )
    return (np.concatenate(scores) if scores else np.zeros(0)), failed


def evaluate_ood(
    classifier: Classifier, result: EvalResult, other: Path, batch_size: int = 32, workers: int = 2
) -> dict[str, Any]:
    """AUROC and FPR95 of the OOD score: ``result``'s images are "in", every image under ``other`` "out"."""
    paths = sorted(p for p in Path(other).expanduser().rglob("*") if is_image_file(p))
    if not paths:
        raise DataError(f"--ood: no image files under {other}")
    out_scores, failed = ood_scores(classifier, paths, batch_size, workers)
    result.skipped += failed
    trust = classifier.trust
    in_scores = result.ood_scores
    method = trust.ood.method if trust.ood else "msp (the model carries no OOD score)"
    if in_scores is None:
        in_scores = msp_score(softmax(result.logits, trust.temperature))
    if not len(out_scores) or not len(in_scores):
        raise DataError(f"--ood: no decodable images under {other} or in the evaluated split")
    threshold = trust.threshold if trust.threshold is not None else acceptance_threshold(in_scores, 0.95)
    result.ood = {
        "method": method,
        "other": str(other),
        "n_in": int(len(in_scores)),
        "n_out": int(len(out_scores)),
        "auroc": auroc(in_scores, out_scores),
        "fpr95": fpr_at_95(in_scores, out_scores),
        "threshold": threshold,
        "accepted_in": float((in_scores <= threshold).mean()),
        "accepted_out": float((out_scores <= threshold).mean()),
    }
    return result.ood


def write_report(result: EvalResult, out_dir: Path, extra: dict[str, Any]) -> tuple[Path, Path]:
    """``report.json``, ``confusion_matrix.png`` and ``reliability.png`` in ``out_dir``, each atomic."""
    report = out_dir / "report.json"
    picture = out_dir / "confusion_matrix.png"
    write_atomic(report, (json.dumps({**extra, **result.to_json()}, indent=2) + "\n").encode())
    write_confusion_matrix_png(result.confusion, result.labels, picture)
    if result.logits is not None and len(result.logits):
        curves = {"before (T = 1)": reliability(softmax(result.logits), result.targets)}
        if result.temperature != 1.0:
            after = softmax(result.logits, result.temperature)
            curves[f"after (T = {result.temperature:.3f})"] = reliability(after, result.targets)
        write_reliability_png(curves, out_dir / "reliability.png")
    return report, picture


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit eval", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="ONNX file from `vit export`, or a `vit fit` checkpoint")
    parser.add_argument("data", type=Path, help="image folder laid out like the training data")
    parser.add_argument("--split", choices=SPLITS, default="val")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as in training (flat layout)")
    parser.add_argument("--seed", type=int, default=0, help="as in training (flat layout)")
    parser.add_argument(
        "--ood", type=Path, metavar="OTHER_DIR", help="images of no known class: report OOD AUROC and FPR95"
    )
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
    if args.ood is not None:
        try:
            evaluate_ood(classifier, result, args.ood, args.batch_size, args.workers)
        except DataError as exc:
            print(f"vit eval: {exc}", file=sys.stderr)
            return 2
    for path, reason in result.skipped:
        print(f"vit eval: skipped {path}: {reason}", file=sys.stderr)
    out_dir = args.output_dir or Path(f"eval-{args.model.name.split('.')[0]}")
    extra = {"model": str(args.model), "data": str(args.data), "split": args.split}
    report, picture = write_report(result, out_dir, extra)
    print(format_per_class_table(result.confusion, result.labels, title=f"{args.split} per-class accuracy"))
    print(f"top-1 {100 * result.top1:.2f}%  top-{result.top5_k} {100 * result.top5:.2f}%  n={result.n}")
    calibration = result.calibration
    if calibration:
        b, a = calibration["before"], calibration["after"]
        print(
            f"calibration (T = {result.temperature:.3f}): ECE {100 * b['ece']:.2f}% -> {100 * a['ece']:.2f}%  "
            f"NLL {b['nll']:.4f} -> {a['nll']:.4f}  Brier {b['brier']:.4f} -> {a['brier']:.4f}"
        )
    if result.ood:
        o = result.ood
        print(
            f"OOD ({o['method']}) vs {o['other']}: AUROC {o['auroc']:.4f}  FPR95 {100 * o['fpr95']:.2f}%  "
            f"(n_in={o['n_in']}, n_out={o['n_out']})"
        )
    print(f"report: {report}\nconfusion matrix: {picture}")
    if result.skipped:
        print(f"vit eval: {len(result.skipped)} file(s) skipped (listed in the report)", file=sys.stderr)
    return 1 if result.skipped or result.n == 0 else 0
