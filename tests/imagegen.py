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


def small_square_image(
    rng: np.random.Generator, colour: tuple[int, int, int], size: tuple[int, int] = (32, 32), side: int = 6
) -> tuple[Image.Image, tuple[int, int, int]]:
    """Noisy background with one small square of ``colour`` at a random place.

    Returns the image and the square as ``(top, left, side)`` in pixels, so a test can ask
    whether an explanation points at it.
    """
    width, height = size
    pixels = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    pixels[top : top + side, left : left + side] = colour
    return Image.fromarray(pixels), (top, left, side)


def write_square_folder(
    root: Path,
    classes: int = 4,
    per_class: int = 64,
    size: tuple[int, int] = (32, 32),
    side: int = 6,
    seed: int = 0,
) -> dict[Path, tuple[int, int, int]]:
    """``root/c<k>/<i>.png`` whose class is the colour of a small square; returns path -> square."""
    rng = np.random.default_rng(seed)
    squares: dict[Path, tuple[int, int, int]] = {}
    for k in range(classes):
        folder = root / f"c{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image, square = small_square_image(rng, COLOURS[k % len(COLOURS)], size, side)
            path = folder / f"{i:03d}.png"
            image.save(path)
            squares[path] = square
    return squares
