"""Proxy image folders for tuning the small-folder defaults (docs/TRAINING_RECIPES.md).

    python scripts/proxy_folders.py digits OUT            # 2,000 train / 1,000 val, 28 px grey PNGs
    python scripts/proxy_folders.py cifar CIFAR OUT --train 2000 [--val 1000]

``digits``: scikit-learn's bundled 8x8 digits (no download) drawn MNIST-style: each digit
resized to 20x20 and centred on a black 28x28 canvas, white ink. The 1,797 source digits are
split per class into train and val sources (2:1) before anything else, so no val image is a
variant of a train image; each split is filled to its size with the sources plus randomly
shifted, rotated and scaled variants of them (seeded).

``cifar``: ``CIFAR/train`` and ``CIFAR/test`` class folders (the unpacked CIFAR-10 JPEG zip) ->
``OUT/train`` with the first ``--train / 10`` images of each class and ``OUT/val`` with the first
``--val / 10`` test images of each class, as symbolic links (nothing copied).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIDE, DIGIT_BOX = 28, 20


def digit_image(pixels: np.ndarray, rng: np.random.Generator | None) -> Image.Image:
    """One 8x8 sklearn digit (0..16) -> 28x28 grey, white on black; a random variant with ``rng``."""
    grey = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)
    digit = Image.fromarray(grey, "L").resize((DIGIT_BOX, DIGIT_BOX), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (SIDE, SIDE), 0)
    canvas.paste(digit, ((SIDE - DIGIT_BOX) // 2, (SIDE - DIGIT_BOX) // 2))
    if rng is None:
        return canvas
    scale = float(rng.uniform(0.85, 1.1))
    angle = float(rng.uniform(-12, 12))
    shift = tuple(float(v) for v in rng.uniform(-2.5, 2.5, size=2))
    return (
        canvas.rotate(angle, Image.Resampling.BICUBIC, translate=shift)
        .resize((round(SIDE * scale),) * 2, Image.Resampling.BICUBIC)
        .crop(_centre_box(round(SIDE * scale)))
    )


def _centre_box(side: int) -> tuple[int, int, int, int]:
    left = (side - SIDE) // 2
    return left, left, left + SIDE, left + SIDE


def write_digits(out: Path, train: int = 2000, val: int = 1000, seed: int = 0) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    sources: dict[str, list[int]] = {"train": [], "val": []}
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        cut = round(len(indices) * train / (train + val))
        sources["train"] += indices[:cut].tolist()
        sources["val"] += indices[cut:].tolist()
    for split, count in (("train", train), ("val", val)):
        chosen = sources[split]
        plan = chosen + rng.choice(chosen, size=count - len(chosen)).tolist()
        for number, index in enumerate(plan):
            variant = rng if number >= len(chosen) else None
            folder = out / split / str(digits.target[index])
            folder.mkdir(parents=True, exist_ok=True)
            digit_image(digits.images[index], variant).save(folder / f"{number:05d}.png")
    print(f"{out}: {train} train / {val} val digit images, {SIDE} px grey")


def link_cifar(cifar: Path, out: Path, train: int, val: int) -> None:
    for split, source, count in (("train", "train", train), ("val", "test", val)):
        for class_dir in sorted(p for p in (cifar / source).iterdir() if p.is_dir()):
            target = out / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for file in sorted(class_dir.iterdir())[: count // 10]:
                link = target / file.name
                if not link.exists():
                    link.symlink_to(file.resolve())
    print(f"{out}: {train} train / {val} val CIFAR-10 images (links)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    digits = sub.add_parser("digits")
    digits.add_argument("out", type=Path)
    cifar = sub.add_parser("cifar")
    cifar.add_argument("cifar", type=Path, help="folder with train/<class>/ and test/<class>/")
    cifar.add_argument("out", type=Path)
    cifar.add_argument("--train", type=int, default=2000)
    cifar.add_argument("--val", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.kind == "digits":
        write_digits(args.out)
    else:
        link_cifar(args.cifar, args.out, args.train, args.val)
    return 0


if __name__ == "__main__":
    sys.exit(main())
