"""Fitting the trust rules with torch: the temperature at the end of ``vit fit`` and, at
``vit export --check-data DIR``, the temperature, the OOD statistics and threshold, and the
Mahalanobis score built into the exported graph (applied by :mod:`serve.trust`).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from serve.metadata import Calibration, ModelMetadata, OodSpec
from serve.preprocess import Preprocessing
from serve.trust import Trust
from vit.batches import image_batches
from vit.calibrate import calibrate
from vit.folder import DataError, Sample, discover
from vit.ood import MahalanobisStats, acceptance_threshold, fit_mahalanobis

OOD_METHOD = "mahalanobis"  # chosen by measurement: docs/TRUST.md
SCORE_OUTPUT = "ood_score"
TRAIN_LIMIT = 5000  # training images whose features give the class means and covariance
VAL_LIMIT = 5000  # validation images for the temperature and the threshold


def pooled_features(net: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's pre-logits features (pooled, after ``fc_norm``) and the logits, from one forward pass."""
    features = net.forward_head(net.forward_features(images), pre_logits=True)
    return features, net.get_classifier()(features)


def collect(
    net: torch.nn.Module, samples: list[Sample], preprocessing: Preprocessing, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits [N, C], features [N, D], targets [N]) of every decodable sample, through the shared decoding."""
    logits, features, targets = [], [], []
    with torch.inference_mode():
        for batch in image_batches(samples, preprocessing, batch_size, path_of=lambda s: s[0]):
            if batch.items:
                f, z = pooled_features(net, torch.from_numpy(batch.images))
                features.append(f.float().numpy())
                logits.append(z.float().numpy())
                targets += [label for _, label in batch.items]
    if not logits:
        raise DataError("none of the images could be decoded")
    return np.concatenate(logits), np.concatenate(features), np.array(targets)


def spread(samples: list[Sample], limit: int, seed: int = 0) -> list[Sample]:
    """At most ``limit`` samples, drawn without replacement (seeded), kept in their order."""
    if len(samples) <= limit:
        return samples
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
    return [samples[i] for i in keep]


def per_class_accuracy(logits: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict[str, float | None]:
    """Validation accuracy per class name (None for a class without images)."""
    hits = logits.argmax(axis=1) == targets
    return {
        name: float(hits[targets == c].mean()) if (targets == c).any() else None
        for c, name in enumerate(labels)
    }


def image_sizes(samples: list[Sample]) -> str:
    """Smallest, median and largest width x height (by area) among the files, read from their headers."""
    from PIL import Image

    sizes = []
    for path, _ in samples:
        try:
            with Image.open(path) as probe:
                sizes.append(probe.size)
        except OSError:
            continue  # undecodable files are reported by the decoding step
    if not sizes:
        return "unknown"
    ordered = sorted(sizes, key=lambda wh: wh[0] * wh[1])
    return (
        ", ".join(f"{w}x{h}" for w, h in (ordered[0], ordered[len(ordered) // 2], ordered[-1]))
        + " (min, median, max)"
    )


class ScoreHead(torch.nn.Module):
    """The classifier head plus one column: the smallest squared Mahalanobis distance to a class mean."""

    def __init__(self, head: torch.nn.Module, stats: MahalanobisStats) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("whiten", torch.from_numpy(stats.whiten.astype(np.float32)))
        self.register_buffer("centres", torch.from_numpy((stats.means @ stats.whiten).astype(np.float32)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # Mul + ReduceSum, not MatMul: dynamic int8 quantization rewrites every MatMul with a
        # constant weight; the whitening stays fp32 in int8 files (it is D*D multiplies a row).
        z = (features[:, :, None] * self.whiten[None]).sum(1)
        # Direct differences rather than |z|² - 2z·m + |m|²: no cancellation in fp16 or int8 files.
        distances = (z[:, None, :] - self.centres[None]).pow(2).sum(-1)
        # TopK, not ReduceMin: onnxruntime's symbolic shape inference (int8 quantization) cannot
        # follow opset-18 ReduceMin's output shape.
        nearest = distances.topk(1, dim=1, largest=False).values
        return torch.cat([self.head(features), nearest], dim=1)


class WithOodScore(torch.nn.Module):
    """``module``'s outputs with the last logit column split off as a separate ``ood_score`` [N, 1] output."""

    def __init__(self, module: torch.nn.Module, classes: int) -> None:
        super().__init__()
        self.module = module
        self.classes = classes

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(images)
        first, rest = (out[0], tuple(out[1:])) if isinstance(out, (tuple, list)) else (out, ())
        # [N, 1] rather than [N]: Triton's batched tensors need a dimension besides the batch.
        return (first[:, : self.classes], *rest, first[:, self.classes :])


def with_score_output(module: torch.nn.Module, stats: MahalanobisStats, classes: int) -> torch.nn.Module:
    """A copy of ``module`` (the net or a wrapper holding it as ``.net``) with the score as its last output."""
    module = copy.deepcopy(module)
    net = module.net if hasattr(module, "net") else module
    if hasattr(net, "head") and isinstance(net.head, torch.nn.Module):
        net.head = ScoreHead(net.head, stats)
    else:
        raise ValueError(f"{type(net).__name__}: no `head` classifier to attach the OOD score to")
    return WithOodScore(module, classes).eval()


@dataclass
class TrustPlan:
    """What the export step decided: the module and outputs to export, the metadata, the card facts."""

    module: torch.nn.Module
    names: list[str]
    metadata: ModelMetadata
    facts: dict[str, Any] = field(default_factory=dict)


def check_splits(
    root: Path, labels: list[str], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample], str]:
    """(train, val, how) of ``root`` read like ``vit fit`` reads it, class indices mapped to ``labels``."""
    splits = discover(root, val_fraction=val_fraction, seed=seed)
    unknown = [name for name in splits.classes if name not in labels]
    if unknown:
        raise DataError(f"{root}: class folder(s) the model does not know: {', '.join(unknown)}")
    index = [labels.index(name) for name in splits.classes]
    train = [(p, index[c]) for p, c in splits.train]
    val = [(p, index[c]) for p, c in splits.val]
    layout = "val/ folder" if (root / "val").is_dir() else f"val_fraction {val_fraction:g}, seed {seed}"
    return train, val, layout


def prepare_trust(
    net: torch.nn.Module,
    module: torch.nn.Module,
    names: list[str],
    metadata: ModelMetadata,
    check_data: str | Path | None,
    ood_accept: float = 0.95,
    checkpoint_info: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    method: str = OOD_METHOD,
) -> TrustPlan:
    """The export step: temperature, OOD score and card facts for ``metadata``; the module to export.

    Without ``check_data`` (or when it is not a class-folder tree) the checkpoint's temperature
    from the end of ``vit fit`` is kept and there is no OOD score.
    """
    from vit.card import card_facts

    info = checkpoint_info or {}
    saved = info.get("calibration")
    calibration = Calibration.from_dict(saved) if saved else None
    ood = None
    counts: dict[str, int] = {}
    extra: dict[str, Any] = {"parameters": int(sum(p.numel() for p in net.parameters()))}
    if check_data is not None:
        data = info.get("data") or {}
        root = Path(check_data).expanduser()
        try:
            train, val, layout = check_splits(
                root, metadata.labels, float(data.get("val_fraction", 0.1)), int(data.get("seed", 0))
            )
        except (DataError, OSError, ValueError) as exc:
            log(f"trust: {exc}; no calibration or OOD score fitted on --check-data")
            train = val = []
        if train and val:
            counts = {name: 0 for name in metadata.labels}
            for _, c in train:
                counts[metadata.labels[c]] += 1
            val, train = spread(val, VAL_LIMIT), spread(train, TRAIN_LIMIT)
            log(f"trust: fitting on {root} ({len(train)} train / {len(val)} val images, {layout}) ...")
            logits, features, targets = collect(net.eval(), val, metadata.preprocessing)
            where = f"val split of {root} ({len(targets)} images, {layout})"
            calibration = Calibration.from_dict(calibrate(logits, targets, where))
            extra["per_class_accuracy"] = per_class_accuracy(logits, targets, metadata.labels)
            extra["image_sizes"] = image_sizes(train)
            scores, stats, module, names = ood_scores(
                method, net, module, names, metadata, train, logits, features, calibration.temperature
            )
            threshold = acceptance_threshold(scores, ood_accept)
            stats["val_accepted"] = float((scores <= threshold).mean())
            output = SCORE_OUTPUT if method == "mahalanobis" else None
            ood = OodSpec(method, threshold, ood_accept, output, where, stats)
    outputs = {**metadata.outputs, "ood_score": ood.output if ood else None}
    metadata = dataclasses.replace(metadata, calibration=calibration, ood=ood, outputs=outputs)
    facts = card_facts(metadata, info, counts, extra)
    return TrustPlan(module, names, dataclasses.replace(metadata, card=facts), facts)


def ood_scores(
    method: str,
    net: torch.nn.Module,
    module: torch.nn.Module,
    names: list[str],
    metadata: ModelMetadata,
    train: list[Sample],
    val_logits: np.ndarray,
    val_features: np.ndarray,
    temperature: float,
) -> tuple[np.ndarray, dict[str, Any], torch.nn.Module, list[str]]:
    """Validation scores by ``method`` (as :class:`serve.trust.Trust` computes them), the
    statistics to record, and the module and output names to export (Mahalanobis adds one)."""
    outputs = {"logits": val_logits}
    stats: dict[str, Any] = {}
    if method == "mahalanobis":
        _, features, targets = collect(net, train, metadata.preprocessing)
        fitted = fit_mahalanobis(features, targets, len(metadata.labels))
        outputs[SCORE_OUTPUT] = fitted.score(val_features)
        stats = {"train_images": int(len(targets)), "feature_dim": int(features.shape[1])}
        stats["covariance_shrinkage"] = fitted.shrinkage
        module, names = with_score_output(module, fitted, len(metadata.labels)), [*names, SCORE_OUTPUT]
    output = SCORE_OUTPUT if method == "mahalanobis" else None
    trust = Trust(temperature, OodSpec(method, threshold=0.0, output=output))
    return trust.apply(outputs).ood_scores, stats, module, names


class CalibrateAtFitEnd(pl.Callback):
    """When ``vit fit`` ends, fit the temperature of ``best.ckpt`` and ``last.ckpt`` on the
    validation split and store it (and the training facts) in each file."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        calibrate_checkpoints(trainer, pl_module)


def training_facts(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """Per-class image counts, steps, epochs and time of the run, for the model card."""
    from lightning.pytorch.callbacks import Timer

    dm = trainer.datamodule
    classes = list(dm.splits.classes)
    counts = np.bincount([c for _, c in dm.splits.train], minlength=len(classes))
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    score = getattr(trainer.checkpoint_callback, "best_model_score", None)
    return {
        "class_counts": {name: int(n) for name, n in zip(classes, counts, strict=True)},
        "val_images": len(dm.splits.val),
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "max_epochs": trainer.max_epochs,
        "budget_seconds": getattr(timer, "_duration", None) if timer else None,
        "train_seconds": round(timer.time_elapsed("train"), 1) if timer else None,
        "best_val_top1": float(score) if score is not None else None,
    }


def calibrate_checkpoints(trainer: Any, pl_module: Any) -> None:
    """The fit-end step: temperature per checkpoint file (each has its own weights), written atomically."""
    from vit.atomic import atomic_file
    from vit.checkpoint import load_checkpoint
    from vit.model import CHECKPOINT_KEY

    callback = trainer.checkpoint_callback
    if not trainer.is_global_zero or callback is None or trainer.fast_dev_run:
        return
    dm = trainer.datamodule
    samples = list(dm.splits.val)
    paths = {p for p in (callback.best_model_path, callback.last_model_path) if p and Path(p).is_file()}
    if not samples or not paths:
        return
    facts = training_facts(trainer, pl_module)
    for path in sorted(paths):
        loaded = load_checkpoint(path)
        logits, _, targets = collect(loaded.net, samples, loaded.preprocessing)
        calibration = calibrate(logits, targets, f"val split of {dm.hparams.root} ({len(targets)} images)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        checkpoint[CHECKPOINT_KEY]["calibration"] = calibration
        checkpoint[CHECKPOINT_KEY]["training"] = facts
        with atomic_file(Path(path)) as tmp:
            torch.save(checkpoint, tmp)
        before, after = calibration["metrics"]["before"], calibration["metrics"]["after"]
        print(
            f"calibration ({Path(path).name}): temperature {calibration['temperature']:.3f}, "
            f"val ECE {100 * before['ece']:.2f}% -> {100 * after['ece']:.2f}%, "
            f"NLL {before['nll']:.3f} -> {after['nll']:.3f}"
        )
