"""Synthetic image folders for tests: learnable in seconds, made on the fly (nothing shipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40)]


def coloured_square_image(
    rng: np.random.Generator, colour: tuple[int, int, int], size: tuple[int, int]
) -> Image.Image:
    """Noisy background with a square of ``colour``: the class is the colour."""
    width, height = size
    pixels = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    side = max(4, min(width, height) // 2)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    pixels[top : top + side, left : left + side] = colour
    return Image.fromarray(pixels)


def write_class_folder(
    root: Path,
    classes: int = 3,
    per_class: int = 12,
    size: tuple[int, int] = (40, 36),
    seed: int = 0,
    suffix: str = ".png",
) -> Path:
    """``root/c<k>/<i><suffix>`` with ``per_class`` images per class; returns ``root``."""
    rng = np.random.default_rng(seed)
    for k in range(classes):
        folder = root / f"c{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coloured_square_image(rng, COLOURS[k % len(COLOURS)], size).save(folder / f"{i:03d}{suffix}")
    return root
