"""Defaults from a look at the data: image size, patch, model, batch size, cache and precision.

The rule of thumb (docs/TRAINING_RECIPES.md) in code, for a user who points ``vit fit`` at a
folder and sets nothing else:

* image size: the largest of 32, 48, 64, 96, 128, 160, 192, 224 that is not above the median
  shorter side of the images (never upscale; 224 at most — beyond that, fine-tune instead);
* patch: 4 up to 48 px, 8 up to 96 px (conv stem: 64-144 tokens), 16 above (plain ViT:
  64-196 tokens);
* model: up to 96 px, the conv-stem ViT of the CIFAR recipe (a patchify layer wastes small
  images; measured on 2 CPU cores, the small conv-stem model with 8x8 tokens learned the most
  per minute); above, ViT-Tiny/16, or ViT-Small/16 with a GPU and at least 100k training images;
* batch size: 128 up to 64 px, else 64 — at most an eighth of the training images;
* with a time limit (``--budget``): the model size (vit.sizing: the largest rung of a ladder
  that sees enough epochs at this machine's measured speed), the faster of fp32 and native
  bf16, and regularisation that follows the epochs (:func:`regularisation_for_epochs`);
* without one, augmentation and regularisation by training-image count (:data:`REGULARISATION`): below 40k
  images timm's random-resized crops (0.08-1) and drop-path 0.1; from 40k the CIFAR-10 recipe
  (whole images and flips, no drop-path, EMA, LR 2e-3 at batch 128, clipping), because a large
  folder under-fits in a short budget and a small one over-fits (docs/TRAINING_RECIPES.md);
* no horizontal flips for grey folders (digits, text, scans, X-rays: a mirror image is another
  thing; measured in docs/TRAINING_RECIPES.md);
* decoded cache: on for images up to 64 px, ``auto`` (when it fits) above;
* precision: bf16-mixed where the hardware computes in bf16 (CUDA with bf16, CPUs with
  AVX512-BF16 or AMX); 32-true elsewhere, where bf16 is emulated and many times slower;
* with ``--model.pretrained``: fine-tuning (:func:`finetune_defaults`): the pretrained
  architecture and input size, layer-wise LR decay, a frozen-backbone warm-up, a lower peak LR.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vit.folder import discover, mostly_grey, probe_headers
from vit.sizing import Throughput

IMG_SIZES = (32, 48, 64, 96, 128, 160, 192, 224)
SMALL_IMAGE_MODEL = "vit_resstem_nano_patch4_32"
MIN_STEPS_PER_EPOCH = 8
# (fewer than N training images, crop scale low end, drop-path). Measured at both ends: at 2k
# images in 3 minutes the timm crops beat lighter ones (with EMA and smaller batches) on digits
# and CIFAR-10; at 50k images in 30 minutes whole images beat crops (the CIFAR-10 recipe).
REGULARISATION = ((40_000, 0.08, 0.1), (float("inf"), 1.0, 0.0))
LARGE_FOLDER = 40_000  # from here the CIFAR-10 recipe's optimisation too


@dataclass(frozen=True)
class FolderStats:
    """What the defaults depend on: counts and typical image size (from a sample of headers)."""

    classes: int
    train_images: int
    short_side: int  # median shorter side
    long_side: int  # median longer side
    grey: bool = False  # (nearly) every probed image is single-channel


def scan(root: str | Path, probe: int = 256, remember: bool = False) -> FolderStats:
    """Class and image counts plus median sides of up to ``probe`` evenly spaced training files;
    ``remember`` hands the folder scan on to the data module (:func:`vit.folder.discover`)."""
    splits = discover(root, remember=remember)
    headers = probe_headers([path for path, _ in splits.train + splits.val], probe)
    sizes = [size for size, _ in headers]
    short = int(statistics.median(min(s) for s in sizes)) if sizes else IMG_SIZES[-1]
    long = int(statistics.median(max(s) for s in sizes)) if sizes else IMG_SIZES[-1]
    is_grey = mostly_grey(headers)
    return FolderStats(len(splits.classes), len(splits.train), short, long, is_grey)


def choose_img_size(short_side: int) -> int:
    return max([s for s in IMG_SIZES if s <= short_side], default=IMG_SIZES[0])


def choose_patch_size(img_size: int) -> int:
    if img_size <= 48:
        return 4
    return 8 if img_size <= 96 else 16


def choose_batch_size(img_size: int, train_images: int) -> int:
    batch = 128 if img_size <= 64 else 64
    while batch > 8 and batch * MIN_STEPS_PER_EPOCH > train_images:
        batch //= 2
    return batch


def choose_regularisation(train_images: int) -> dict[str, Any]:
    """Crop scale and drop-path for the image count (:data:`REGULARISATION`)."""
    _, low, drop_path = next(row for row in REGULARISATION if train_images < row[0])
    return {"data.scale": [low, 1.0], "model.drop_path_rate": drop_path}


def regularisation_for_epochs(epochs: float, steps: float) -> dict[str, Any]:
    """Regularisation that follows the epochs a time budget buys (``vit fit --budget``).

    Few epochs: whole images, no drop-path, no Mixup (the CIFAR-10 recipe's measured 30-minute
    setting: a model that sees the data ten times under-fits and regularisation only slows it);
    from 10 to 40 epochs the crops (down to timm's 0.08) and drop-path (to 0.1) ramp in, the
    setting measured best on 2,000-image folders at ~50 epochs; from 60 to 150 epochs Mixup
    (0.8) and CutMix (1.0) ramp in as in DeiT's 300-epoch recipe. The EMA averages the last
    tenth of the steps (decay 1 - 10 / steps, within 0.99-0.9999), from 1,000 steps on.
    """
    crops = min(max((epochs - 10.0) / 30.0, 0.0), 1.0)
    mixing = min(max((epochs - 60.0) / 90.0, 0.0), 1.0)
    chosen: dict[str, Any] = {
        "data.scale": [round(1.0 - 0.92 * crops, 3), 1.0],
        "model.drop_path_rate": round(0.1 * crops, 3),
        "model.mixup_alpha": round(0.8 * mixing, 3),
        "model.cutmix_alpha": round(1.0 * mixing, 3),
        "model.label_smoothing": 0.1,
    }
    if steps >= 1000:
        chosen["model.ema_decay"] = round(min(max(1.0 - 10.0 / steps, 0.99), 0.9999), 5)
    return chosen


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (Linux: ``avx512_bf16`` or ``amx_bf16`` flag)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision() -> str:
    import torch

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def choose_model(img_size: int, train_images: int, gpu: bool) -> dict[str, Any]:
    if img_size <= 96:
        return {"model.model_name": SMALL_IMAGE_MODEL}
    large = gpu and train_images >= 100_000
    return {"model.model_name": "vit_small_patch16_224" if large else "vit_tiny_patch16_224"}


def suggest_defaults(
    root: str | Path,
    gpu: bool | None = None,
    remember: bool = False,
    budget_seconds: float | None = None,
    throughput: Throughput | None = None,
) -> dict[str, Any]:
    """Dotted LightningCLI keys -> values for a folder, e.g. ``{"model.img_size": 32, …}``.

    ``gpu`` defaults to whether CUDA is available. With ``budget_seconds`` (``--budget``) the
    model size, precision and regularisation follow what the budget buys on this machine
    (:func:`size_for_budget`; ``throughput`` injects the measured speeds). Every value is only
    a starting point: keys the user sets on the command line or in a config win.
    """
    import torch

    gpu = torch.cuda.is_available() if gpu is None else gpu
    stats = scan(root, remember=remember)
    img_size = choose_img_size(stats.short_side)
    small = img_size <= 64
    batch = choose_batch_size(img_size, stats.train_images)
    model = choose_model(img_size, stats.train_images, gpu)
    suggested = {
        "model.img_size": img_size,
        "model.patch_size": choose_patch_size(img_size),
        **model,
        "data.batch_size": batch,
        "data.eval_crop_pct": 1.0 if small else 0.875,
        "data.cache": True if small else "auto",
        "data.hflip": 0.0 if stats.grey else 0.5,
        "trainer.precision": choose_precision(),
        **choose_regularisation(stats.train_images),
    }
    # The decoded cache's stored training side (vit.cache.train_side's rule) from this probe, so
    # the cache need not open the headers again.
    scale_size = math.floor(img_size / suggested["data.eval_crop_pct"])
    suggested["data.cache_size"] = max(img_size, min(scale_size, stats.short_side))
    if model["model.model_name"] == SMALL_IMAGE_MODEL and stats.train_images >= LARGE_FOLDER:
        # The CIFAR-10 recipe's optimisation (configs/cifar10.yaml), LR scaled with the batch.
        suggested.update({"model.lr": 2e-3 * batch / 128, "model.ema_decay": 0.999})
        suggested["trainer.gradient_clip_val"] = 1.0
    if budget_seconds:
        suggested.update(size_for_budget(suggested, stats, budget_seconds, throughput))
    return suggested


DEFAULT_LR = 1e-3  # ViTClassifier's default: the small-folder defaults leave it, for width 128


def size_for_budget(
    suggested: dict[str, Any], stats: FolderStats, budget_seconds: float, throughput: Throughput | None
) -> dict[str, Any]:
    """Architecture, precision and regularisation for the budget (vit.sizing): the keys to update.

    The chosen rung's reason is printed by the caller from ``"_reason"``; ``"_measure_seconds"``
    is the time spent measuring, which ``vit fit`` takes off the budget.
    """
    from vit.sizing import MeasuredThroughput, choose, ladder_for

    img_size, batch = suggested["model.img_size"], suggested["data.batch_size"]
    family, ladder = ladder_for(img_size)
    if throughput is None:
        throughput = MeasuredThroughput(img_size, suggested["model.patch_size"], stats.classes, batch)
    precisions = ["32-true"]
    if suggested["trainer.precision"] != "32-true":
        precisions.append(suggested["trainer.precision"])  # native bf16/fp16: kept where it is faster
    choice = choose(ladder, throughput, budget_seconds, stats.train_images, precisions, family)
    steps = choice.epochs * stats.train_images / batch
    chosen = {
        **choice.rung.settings(),
        "trainer.precision": choice.precision,
        **regularisation_for_epochs(choice.epochs, steps),
        "_reason": choice.reason(budget_seconds, stats.train_images),
        "_measure_seconds": getattr(throughput, "seconds", 0.0),
    }
    if family == "small-images":
        # The defaults' peak LR was measured for the nano's width 128; wider rungs take it
        # scaled by sqrt(128 / width), as Adam's updates grow with the fan-in.
        base = suggested.get("model.lr", DEFAULT_LR)
        chosen["model.lr"] = round(base * math.sqrt(128 / choice.rung.embed_dim), 6)
    return chosen


FINETUNE_LR_FRACTION = 0.25  # fine-tuning peaks at a quarter of the from-scratch LR
FINETUNE = {
    "model.layer_decay": 0.75,  # block i of L at lr * 0.75 ** (L + 1 - i): early layers move least
    "model.freeze_backbone": 0.05,  # the first 5% of the run trains the new head alone
    "model.warmup": 0.1,
    "model.weight_decay": 0.05,
    "model.label_smoothing": 0.1,
    "model.ema_decay": 0.999,
    "trainer.gradient_clip_val": 1.0,
}


def finetune_defaults(
    root: str | Path, pretrained: str, model_name: str = "vit_tiny_patch16_224", remember: bool = False
) -> dict[str, Any]:
    """Defaults for ``vit fit --data.root DIR --model.pretrained WEIGHTS``: fine-tuning.

    The pretrained network's architecture, input size and preprocessing (vit.pretrained), the
    data-driven batch size, augmentation and cache, and :data:`FINETUNE` with a lower peak LR.
    """
    from vit.pretrained import pretrained_settings

    stats = scan(root, remember=remember)
    network = pretrained_settings(pretrained, model_name)
    img_size = int(network.get("model.img_size", choose_img_size(stats.short_side)))
    batch = choose_batch_size(img_size, stats.train_images)
    scratch_lr = 1e-3 * batch / (128 if img_size <= 96 else 64)  # the from-scratch default LR
    return {
        "data.eval_crop_pct": 1.0 if img_size <= 64 else 0.875,
        **network,  # the pretrained preprocessing wins over the line above
        "model.img_size": img_size,
        "model.lr": FINETUNE_LR_FRACTION * scratch_lr,
        **FINETUNE,
        "data.batch_size": batch,
        "data.hflip": 0.0 if stats.grey else 0.5,
        "data.cache": True if img_size <= 64 else "auto",
        "data.scale": choose_regularisation(stats.train_images)["data.scale"],
        "model.drop_path_rate": 0.1,
        "trainer.precision": choose_precision(),
    }
