"""Training throughput: compute only vs the data pipeline vs both, fp32 vs bf16, in one run.

    python scripts/bench_train.py ~/.cache/vit-data/cifar10 [--config configs/vit-tiny-32.yaml]
        [--rounds 3] [--steps 6] [--bf16-steps 1] [--no-bf16] [--no-jpeg] [--batch-size N]

The zip (or an already unpacked folder with ``train/<class>/``) is CIFAR-10 as JPEG files; it is
unpacked once to ``~/.cache/vit-data``. The model and the data settings come from ``--config``
(``model:`` and ``data:`` sections of a ``vit fit`` config). Modes, interleaved round by round
(A, B, C, A, B, C …) so that the load of a shared machine hits them alike:

* ``compute fp32`` / ``compute bf16``: training steps (forward, label-smoothed loss, backward,
  clipping, AdamW, EMA if configured) on one batch already in memory, no data pipeline;
* ``pipeline cached``: the decoded cache (``data.cache``): memory-mapped uint8 batches,
  random-resized crop + flip + normalisation (:mod:`vit.augment`), no model;
* ``pipeline jpeg``: the uncached loader (JPEG decode + timm transforms in worker processes);
* ``train fp32 cached`` / ``train bf16 cached`` / ``train fp32 jpeg``: both together, as ``vit fit``
  runs them;
* with a conv-stem model (trained in channels-last layout, :mod:`vit.model`), also
  ``compute fp32 NCHW`` / ``train fp32 cached NCHW``: a copy of the model in the default layout.

Worker processes of the JPEG loader are started per measurement and stopped after it, so they
never run during another mode. img/s is images / wall time per measurement; the table gives the
median over rounds, then the ratios the targets refer to.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def unpacked(path: Path) -> Path:
    """A folder with ``train/`` for ``path`` (a folder, or a zip unpacked once into the cache)."""
    if path.is_dir():
        return path / "cifar10" if (path / "cifar10" / "train").is_dir() else path
    target = Path("~/.cache/vit-data").expanduser()
    if not (target / "cifar10" / "train").is_dir():
        print(f"unpacking {path} to {target} …", flush=True)
        with zipfile.ZipFile(path) as archive:
            archive.extractall(target)
    return target / "cifar10"


def build(config: dict[str, Any], data_root: Path, batch_size: int | None) -> tuple[Any, Any, Any]:
    """(model, cached data module, jpeg data module) from a ``vit fit`` config."""
    from vit.data import ImageFolderDataModule
    from vit.model import ViTClassifier

    model_args = dict(config.get("model") or {})
    data_args = {k: v for k, v in (config.get("data") or {}).items() if k != "root"}
    if batch_size:
        data_args["batch_size"] = batch_size
    data_args["img_size"] = model_args.get("img_size", 224)
    common = {**data_args, "root": str(data_root), "val_fraction": 0.02}
    cached = ImageFolderDataModule(**{**common, "cache": True, "num_workers": 0})
    # CIFAR has no bad files; skipping the uncached module's decode-everything check saves a minute.
    jpeg = ImageFolderDataModule(**{**common, "cache": False, "check_images": False})
    for dm in (cached, jpeg):
        dm.setup("fit")
    model = ViTClassifier(
        **model_args, class_names=cached.class_names, preprocessing=cached.preprocessing_dict
    )
    return model, cached, jpeg


def default_layout(model: Any) -> Any:
    """A copy of a channels-last model (network and EMA) in the default memory layout."""
    import copy

    import torch

    plain = copy.deepcopy(model)
    plain.net.to(memory_format=torch.contiguous_format)
    if plain.ema is not None:
        plain.ema.to(memory_format=torch.contiguous_format)
    plain.channels_last = False
    return plain


class Bench:
    """One model and its optimiser; each ``run_*`` returns images per second for ``steps`` steps."""

    def __init__(self, model: Any, cached: Any, jpeg: Any) -> None:
        import torch
        from timm.optim import create_optimizer_v2

        self.torch = torch
        self.model, self.cached, self.jpeg = model, cached, jpeg
        hp = model.hparams
        self.optimizer = create_optimizer_v2(
            model.net, opt=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay
        )
        self.augment = cached.train_augment()
        self.cached_iter = self._forever(cached.train_dataloader)
        images, labels = self.next_cached()
        self.fixed = (images.clone(), labels.clone())  # the in-memory batch for compute-only
        model.net.train()

    @staticmethod
    def _forever(make_loader: Callable[[], Any]) -> Iterator[Any]:
        while True:
            yield from make_loader()

    def next_cached(self) -> tuple[Any, Any]:
        images, labels = next(self.cached_iter)
        return self.augment(images), labels

    def step(self, images: Any, labels: Any, bf16: bool) -> None:
        torch, model = self.torch, self.model
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)  # in the network's memory layout, as in training
            loss = torch.nn.functional.cross_entropy(
                logits, labels, label_smoothing=model.hparams.label_smoothing
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.net.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if model.ema is not None:
            model.ema.update(model.net)

    def timed(self, steps: int, batch: Callable[[], tuple[Any, Any]], bf16: bool | None) -> float:
        images = 0
        start = time.perf_counter()
        for _ in range(steps):
            x, y = batch()
            if bf16 is not None:
                self.step(x, y, bf16)
            images += len(y)
        return images / (time.perf_counter() - start)

    def jpeg_timed(self, steps: int, bf16: bool | None) -> float:
        """The JPEG loader's workers live only for this measurement (started before the clock)."""
        from torch.utils.data import DataLoader

        shared = self.jpeg.train_dataloader()
        loader = DataLoader(
            shared.dataset, shared.batch_size, sampler=shared.sampler, num_workers=shared.num_workers
        )
        iterator = iter(loader)
        next(iterator)  # workers started and warm
        try:
            return self.timed(steps, lambda: next(iterator), bf16)
        finally:
            iterator._shutdown_workers()  # no stray workers during the next mode's measurement

    def modes(self, bf16: bool, jpeg: bool = True) -> dict[str, Callable[[int], float]]:
        modes: dict[str, Callable[[int], float]] = {
            "compute fp32": lambda n: self.timed(n, lambda: self.fixed, False),
            "pipeline cached": lambda n: self.timed(n, self.next_cached, None),
            "pipeline jpeg": lambda n: self.jpeg_timed(n, None),
            "train fp32 cached": lambda n: self.timed(n, self.next_cached, False),
            "train fp32 jpeg": lambda n: self.jpeg_timed(n, False),
        }
        if not jpeg:
            modes = {name: run for name, run in modes.items() if "jpeg" not in name}
        if bf16:
            modes["compute bf16"] = lambda n: self.timed(n, lambda: self.fixed, True)
            modes["train bf16 cached"] = lambda n: self.timed(n, self.next_cached, True)
        return modes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="cifar10-jpeg.zip or an unpacked folder with train/<class>/")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "vit-tiny-32.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="batches per measurement")
    parser.add_argument(
        "--bf16-steps", type=int, default=None, help="batches per bf16 measurement (default --steps)"
    )
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--no-jpeg", action="store_true", help="skip the uncached JPEG loader modes")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--prepare-only", action="store_true", help="build the decoded cache and exit")
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"{args.data} does not exist")

    import torch

    config = yaml.safe_load(args.config.read_text())
    model, cached, jpeg = build(config, unpacked(args.data), args.batch_size)
    if args.prepare_only:
        return 0
    bench = Bench(model, cached, jpeg)
    modes = bench.modes(bf16=not args.no_bf16, jpeg=not args.no_jpeg)
    if model.channels_last:  # the same model in the default layout, side by side
        nchw = Bench(default_layout(model), cached, jpeg)
        modes["compute fp32 NCHW"] = lambda n: nchw.timed(n, lambda: nchw.fixed, False)
        modes["train fp32 cached NCHW"] = lambda n: nchw.timed(n, nchw.next_cached, False)
    bf16_steps = args.bf16_steps or args.steps
    steps = {name: bf16_steps if "bf16" in name else args.steps for name in modes}
    for run in modes.values():  # warm-up: first-call allocations, oneDNN kernels, workers
        run(1)
    results: dict[str, list[float]] = {name: [] for name in modes}
    for round_index in range(args.rounds):
        for name, run in modes.items():
            results[name].append(run(steps[name]))
        print(
            f"round {round_index + 1}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in results.items()),
            flush=True,
        )

    median = {name: statistics.median(values) for name, values in results.items()}
    capability = torch.backends.cpu.get_cpu_capability()
    print(
        f"\n{args.config.name}: {model.hparams.model_name}, batch {cached.hparams.batch_size}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()} ({capability}), median of {args.rounds} rounds\n"
    )
    print("| mode | img/s |\n|---|---:|")
    for name, value in median.items():
        print(f"| {name} | {value:.1f} |")
    base = median["compute fp32"]
    print("\nratios (targets: cached training >= 0.9x compute-only; bf16 >= 1.5x fp32):")
    print(f"  train fp32 cached / compute fp32 = {median['train fp32 cached'] / base:.2f}")
    if "train fp32 jpeg" in median:
        print(f"  train fp32 jpeg   / compute fp32 = {median['train fp32 jpeg'] / base:.2f}")
    print(f"  pipeline cached   / compute fp32 = {median['pipeline cached'] / base:.1f}")
    if "pipeline jpeg" in median:
        print(f"  pipeline jpeg     / compute fp32 = {median['pipeline jpeg'] / base:.1f}")
    if "train fp32 cached NCHW" in median:
        ratio = median["train fp32 cached"] / median["train fp32 cached NCHW"]
        print(f"  train fp32 cached, channels-last / NCHW = {ratio:.2f}")
    if "compute bf16" in median:
        print(f"  compute bf16 / compute fp32 = {median['compute bf16'] / base:.2f}")
        print(
            f"  train bf16 cached / train fp32 cached = {median['train bf16 cached'] / median['train fp32 cached']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
