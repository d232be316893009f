"""The model grows with the budget: the architecture from this machine's measured training speed.

A size ladder per family (conv-stem ViTs for small images, plain ViT/16 above 96 px), smallest
first. Each rung's training throughput is measured for a few steps on random data (fp32, and
bf16 where the hardware computes it natively: the faster precision is kept), cached per
machine in ``$VIT_CACHE_DIR/../throughput.json``, and the largest rung that still sees
:func:`min_epochs` epochs of the folder within the budget is chosen. A rung larger than one
that misses is slower still, so the search stops at the first miss: more time or a faster
machine never chooses a smaller model. The rule and its measurements: docs/TRAINING_RECIPES.md.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vit.atomic import write_atomic

# Share of the budget spent on training steps (validation, checkpoints, the data pipeline and
# the first compiled steps take the rest).
USABLE_FRACTION = 0.85
MEASURE_STEPS = 3  # timed steps per rung and precision, after one warm-up step
# Epochs a 50k-image folder must get from the chosen rung (docs/TRAINING_RECIPES.md: a rung up
# the ladder trained for 12 epochs ended below the nano trained for 16 on CIFAR-10, so ten was
# too few; twenty keeps a step up for budgets where it trains at least that long).
EPOCHS_AT_50K = 20.0
MAX_EPOCHS_NEEDED = 80.0


@dataclass(frozen=True)
class Rung:
    """One architecture of a ladder: timm model name and the overrides of its width and depth."""

    name: str
    model_name: str
    embed_dim: int
    depth: int
    num_heads: int
    stem_width: int | None = None  # conv stems: the stride-1 layer's width
    stage_blocks: int | None = None  # conv stems: residual 3x3 layers after each stride-2 one
    mlp_ratio: float | None = None  # None: the model's own

    def stem_kwargs(self) -> dict[str, Any] | None:
        """``model.model_kwargs`` of a conv-stem rung (None for the others)."""
        kwargs = {"stem_width": self.stem_width, "stage_blocks": self.stage_blocks}
        return {k: v for k, v in kwargs.items() if v} or None

    def architecture(self) -> dict[str, Any]:
        """The width, depth and heads (and MLP ratio where set) of this rung, as ``model.*`` keys."""
        keys = {"embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads}
        return {**keys, "mlp_ratio": self.mlp_ratio} if self.mlp_ratio else keys

    def settings(self) -> dict[str, Any]:
        """Dotted ``vit fit`` keys for this rung."""
        chosen: dict[str, Any] = {"model.size": self.name, "model.model_name": self.model_name}
        chosen.update({f"model.{key}": value for key, value in self.architecture().items()})
        if self.stem_kwargs():
            chosen["model.model_kwargs"] = self.stem_kwargs()
        return chosen

    def build(self, img_size: int, patch_size: int, num_classes: int) -> Any:
        """The network ``vit fit`` would build for this rung (vit.model's one keyword flow)."""
        import timm

        from vit.model import timm_config  # importing vit.model registers the conv stems

        config = timm_config(
            num_classes, self.stem_kwargs(), img_size=img_size, patch_size=patch_size, **self.architecture()
        )
        return timm.create_model(self.model_name, **config)


# Heads of 32 channels for the conv-stem family (the recipe's 128/4), timm's 64 for ViT/16.
# Two residual 3x3 layers per stem stage and MLP ratio 4 (the recipe model has one and 2): on
# CIFAR-10 in 30 minutes the model under-fits, and this capacity costs far less speed than
# attention blocks do (docs/TRAINING_RECIPES.md, "The model grows with the budget").
RESIDUAL_STEM = {"stage_blocks": 2, "mlp_ratio": 4.0}
SMALL_IMAGES = (
    Rung("nano", "vit_resstem_nano_patch4_32", 128, 2, 4, 32, **RESIDUAL_STEM),  # 0.89M
    Rung("micro", "vit_resstem_nano_patch4_32", 192, 3, 6, 48, **RESIDUAL_STEM),
    Rung("mini", "vit_resstem_nano_patch4_32", 256, 4, 8, 64, **RESIDUAL_STEM),
    Rung("small", "vit_resstem_nano_patch4_32", 384, 6, 12, 96, **RESIDUAL_STEM),
)
LARGE_IMAGES = (
    Rung("tiny-6", "vit_tiny_patch16_224", 192, 6, 3),
    Rung("tiny", "vit_tiny_patch16_224", 192, 12, 3),
    Rung("small", "vit_small_patch16_224", 384, 12, 6),
    Rung("base", "vit_base_patch16_224", 768, 12, 12),
)
LADDERS = {"small-images": SMALL_IMAGES, "large-images": LARGE_IMAGES}


def ladder_for(img_size: int) -> tuple[str, Sequence[Rung]]:
    """The family for this input size (conv stems up to 96 px, as vit.autoconfig picks models)."""
    family = "small-images" if img_size <= 96 else "large-images"
    return family, LADDERS[family]


def rung_named(name: str, img_size: int) -> Rung:
    family, ladder = ladder_for(img_size)
    for rung in ladder:
        if rung.name == name:
            return rung
    names = ", ".join(r.name for r in ladder)
    raise ValueError(f"--model.size: no size {name!r} for {img_size} px images ({family}: auto, {names})")


def min_epochs(train_images: int) -> float:
    """Epochs the chosen model must see: 20 on a CIFAR-10-sized folder, more on smaller ones.

    A small folder is cheap per epoch, so a model that sees it only ten times is far too big
    for its data; growing the need as ``sqrt(50k / N)`` keeps the 2,000-image folders on the
    smallest rung in minutes-long budgets, where it was measured best (docs/TRAINING_RECIPES.md).
    """
    scaled = EPOCHS_AT_50K * math.sqrt(50_000 / max(train_images, 1))
    return min(MAX_EPOCHS_NEEDED, max(EPOCHS_AT_50K, scaled))


Throughput = Callable[[Rung, str], float]  # (rung, precision) -> training images per second


@dataclass
class Choice:
    """The rung chosen, at which precision, and the figures that chose it."""

    rung: Rung
    precision: str
    images_per_second: float
    epochs: float
    needed_epochs: float
    family: str
    measured: dict[str, float] = field(default_factory=dict)  # "rung precision" -> img/s

    def reason(self, budget_seconds: float, train_images: int) -> str:
        """One line: what was chosen and why."""
        seen = ", ".join(f"{k} {v:.0f} img/s" for k, v in self.measured.items())
        return (
            f"model size {self.rung.name} ({self.family}: width {self.rung.embed_dim}, depth "
            f"{self.rung.depth}, {self.precision}): the largest that sees >= {self.needed_epochs:.0f} "
            f"epochs of {train_images} images in {budget_seconds / 60:.0f} min ({self.epochs:.1f} at "
            f"{self.images_per_second:.0f} img/s; measured {seen})"
        )


def choose(
    ladder: Sequence[Rung],
    throughput: Throughput,
    budget_seconds: float,
    train_images: int,
    precisions: Sequence[str] = ("32-true",),
    family: str = "",
) -> Choice:
    """The largest rung of ``ladder`` that sees :func:`min_epochs` epochs (the first one at least)."""
    needed = min_epochs(train_images)
    measured: dict[str, float] = {}
    chosen: Choice | None = None
    for rung in ladder:
        speeds = {p: throughput(rung, p) for p in precisions}
        measured.update({f"{rung.name} {p}": v for p, v in speeds.items()})
        precision = max(speeds, key=lambda p: speeds[p])
        epochs = USABLE_FRACTION * budget_seconds * speeds[precision] / max(train_images, 1)
        if epochs < needed and chosen is not None:
            break  # larger rungs are slower still
        chosen = Choice(rung, precision, speeds[precision], epochs, needed, family)
        if epochs < needed:
            break  # the smallest rung misses too: it is the choice, nothing larger is measured
    assert chosen is not None, "empty ladder"
    chosen.measured = measured
    return chosen


# -- measuring --------------------------------------------------------------------------------
def machine_key() -> str:
    """What training speed depends on: CPU model, usable cores, GPU, torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{cpu} x{cores} threads={torch.get_num_threads()} {gpu} torch {torch.__version__}"


def default_cache_path() -> Path:
    """Beside the decoded-image cache: ``$VIT_CACHE_DIR/../throughput.json`` or ``~/.cache/vit``."""
    from vit.cache import default_cache_dir

    return default_cache_dir().parent / "throughput.json"


class MeasuredThroughput:
    """Training img/s of a rung on this machine: measured once, then read from the cache file."""

    def __init__(
        self, img_size: int, patch_size: int, num_classes: int, batch_size: int, cache: Path | None = None
    ) -> None:
        self.img_size, self.patch_size = img_size, patch_size
        self.num_classes, self.batch_size = num_classes, batch_size
        self.cache = cache or default_cache_path()
        self.machine = machine_key()
        self.seconds = 0.0  # spent measuring (not reading the cache)

    def key(self, rung: Rung, precision: str) -> str:
        return f"{self.machine} | {rung} | {self.img_size}px/{self.patch_size} b{self.batch_size} {precision}"

    def __call__(self, rung: Rung, precision: str) -> float:
        entries = self._read()
        key = self.key(rung, precision)
        if key not in entries:
            start = time.monotonic()
            entries[key] = train_speed(
                rung.build(self.img_size, self.patch_size, self.num_classes),
                self.img_size,
                self.batch_size,
                precision,
            )
            self.seconds += time.monotonic() - start
            write_atomic(self.cache, json.dumps(entries, indent=1, sort_keys=True).encode())
        return float(entries[key])

    def _read(self) -> dict[str, float]:
        try:
            entries = json.loads(self.cache.read_text())
        except (OSError, ValueError):
            return {}  # absent or unreadable: measure again and rewrite it
        return entries if isinstance(entries, dict) else {}


def train_speed(
    net: Any, img_size: int, batch_size: int, precision: str, steps: int = MEASURE_STEPS
) -> float:
    """Images per second of full training steps (forward, loss, backward, AdamW) on random data."""
    import torch
    import torch.nn.functional as F

    from vit.stems import has_conv_stem

    device = "cuda" if torch.cuda.is_available() else "cpu"
    layout = torch.channels_last if has_conv_stem(net) else torch.contiguous_format
    net = net.to(device, memory_format=layout).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    images = torch.randn(batch_size, 3, img_size, img_size, device=device).contiguous(memory_format=layout)
    targets = torch.randint(0, net.num_classes, (batch_size,), device=device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

    def step() -> None:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(net(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocation and kernel selection
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)
