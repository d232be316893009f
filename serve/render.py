"""Attention pictures, torch-free (numpy + PIL): heatmap overlays, captions and tiled grids.

Shared by ``vit explain`` and the server, so both draw the same picture from a map.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# matplotlib's "inferno" (perceptually uniform, readable in greyscale) at 10 even stops,
# interpolated linearly: a small table instead of a matplotlib dependency.
INFERNO = np.array(
    [
        (0, 0, 4),
        (27, 12, 66),
        (75, 12, 107),
        (120, 28, 109),
        (165, 44, 96),
        (207, 68, 70),
        (237, 105, 37),
        (251, 154, 6),
        (247, 208, 60),
        (252, 255, 164),
    ],
    dtype=np.float32,
)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + (3,)) on the inferno scale."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(INFERNO), dtype=np.float32)
    rgb = np.stack([np.interp(v, stops, INFERNO[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def normalise_grid(grid: np.ndarray) -> np.ndarray:
    """A non-negative 2-D map -> float32 in [0, 1] (min to 0, max to 1; a flat map becomes 0)."""
    g = np.asarray(grid, dtype=np.float32)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"attention grid must be 2-D [grid_h, grid_w], got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("attention grid has NaN or infinite values")
    if g.min() < -1e-6:
        raise ValueError(f"attention grid must be non-negative, min is {g.min():.3g}")
    low, high = float(g.min()), float(g.max())
    if high - low <= 1e-12:
        return np.zeros_like(g)
    return (g - low) / (high - low)


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Normalised map -> float32 ``[height, width]`` for ``size=(width, height)``, bicubic, in [0, 1]."""
    image = Image.fromarray(normalise_grid(grid), mode="F")
    return np.clip(np.asarray(image.resize(size, Image.Resampling.BICUBIC), dtype=np.float32), 0.0, 1.0)


def heatmap(grid: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The map alone, coloured, at ``size=(width, height)``."""
    return Image.fromarray(colormap(upsample(grid, size)), "RGB")


def overlay_heatmap(image: Image.Image, grid: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``image`` with the coloured map blended in where attention is (RGB, same size).

    Each pixel's colour weight is ``alpha`` times the map's value there (0 to 1), so regions the
    model ignores show the image untouched and the picture stays readable; a uniform blend
    buried the digit or object under the colour scale.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = np.asarray(image.convert("RGB"), np.float32)
    values = upsample(grid, image.size)
    weight = (alpha * values)[..., None]
    blended = base * (1.0 - weight) + colormap(values).astype(np.float32) * weight
    return Image.fromarray(np.round(blended).astype(np.uint8), "RGB")


def side_by_side(left: Image.Image, right: Image.Image, pad: int = 4) -> Image.Image:
    """Two images next to each other on a white sheet (the original beside its overlay)."""
    sheet = Image.new("RGB", (left.width + pad + right.width, max(left.height, right.height)), BACKGROUND)
    sheet.paste(left.convert("RGB"), (0, 0))
    sheet.paste(right.convert("RGB"), (left.width + pad, 0))
    return sheet


def overlay_pair(image: Image.Image, grid: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``image`` as it is, and beside it the overlay of ``grid`` (what the server's PNG can show too)."""
    return side_by_side(image, overlay_heatmap(image, grid, alpha))


def font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` (bitmap fallback on Pillow builds without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def wrap(text: str, width: int, face: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> list[str]:
    """Break ``text`` at spaces so each line fits ``width`` pixels (a single long word is cut with …)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and measure(candidate, font=face) > width:
            lines.append(current)
            candidate = word
        current = candidate
    lines.append(current)
    for i, line in enumerate(lines):
        while len(line) > 1 and measure(line, font=face) > width:
            line = line[:-2] + "…"
        lines[i] = line
    return lines


def caption(lines: Sequence[str], width: int, size: int = 14, pad: int = 6) -> Image.Image:
    """White bar of ``width`` pixels with the given lines, word-wrapped to fit."""
    face = font(size)
    wrapped = [part for line in lines for part in wrap(line, width - 2 * pad, face)]
    line_height = size + 4
    bar = Image.new("RGB", (width, pad * 2 + line_height * max(len(wrapped), 1)), BACKGROUND)
    draw = ImageDraw.Draw(bar)
    for i, line in enumerate(wrapped):
        draw.text((pad, pad + i * line_height), line, fill=TEXT, font=face)
    return bar


def colour_bar(width: int, height: int = 10, low: str = "low", high: str = "high attention") -> Image.Image:
    """The colour scale with its two ends named (maps are scaled min..max per picture)."""
    face = font(11)
    ramp = Image.fromarray(colormap(np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))), "RGB")
    bar = Image.new("RGB", (width, height + 16), BACKGROUND)
    bar.paste(ramp, (0, 0))
    draw = ImageDraw.Draw(bar)
    draw.text((2, height + 2), low, fill=TEXT, font=face)
    draw.text((width - 2 - draw.textlength(high, font=face), height + 2), high, fill=TEXT, font=face)
    return bar


def tile(
    images: Sequence[Image.Image], labels: Sequence[str] | None = None, columns: int = 4, pad: int = 4
) -> Image.Image:
    """Images of equal size in a grid, each with an optional label under it."""
    if not images:
        raise ValueError("tile: no images")
    w, h = images[0].size
    face = font(12)
    label_h = 16 if labels else 0
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (pad + columns * (w + pad), pad + rows * (h + label_h + pad)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        x = pad + (i % columns) * (w + pad)
        y = pad + (i // columns) * (h + label_h + pad)
        sheet.paste(image.convert("RGB").resize((w, h)), (x, y))
        if labels:
            draw.text((x, y + h + 1), labels[i], fill=TEXT, font=face)
    return sheet


def stack(parts: Sequence[Image.Image], pad: int = 4) -> Image.Image:
    """Parts one under another, centred on a white sheet as wide as the widest."""
    width = max(p.width for p in parts)
    sheet = Image.new("RGB", (width, sum(p.height for p in parts) + pad * (len(parts) - 1)), BACKGROUND)
    y = 0
    for part in parts:
        sheet.paste(part.convert("RGB"), ((width - part.width) // 2, y))
        y += part.height + pad
    return sheet


def display_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """Scale ``(width, height)`` so its shorter side is ``short_side`` (small inputs are enlarged)."""
    w, h = size
    scale = short_side / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def explanation_figure(
    view: Image.Image,
    grid: np.ndarray,
    lines: Sequence[str],
    head_grids: np.ndarray | None = None,
    head_labels: Sequence[str] | None = None,
    alpha: float = 0.5,
    short_side: int = 256,
) -> Image.Image:
    """``view`` (enlarged to ``short_side``) beside the overlay of ``grid``, a caption, and optional per-head overlays.

    ``view`` is the image exactly as the model saw it (after resize and centre crop).
    """
    shown = view.convert("RGB").resize(display_size(view.size, short_side), Image.Resampling.BICUBIC)
    main = overlay_pair(shown, grid, alpha)
    parts = [main, colour_bar(main.width), caption(lines, main.width)]
    if head_grids is not None and len(head_grids):
        small = shown.resize(display_size(shown.size, max(48, short_side // 4)), Image.Resampling.BICUBIC)
        overlays = [overlay_heatmap(small, g, alpha) for g in head_grids]
        labels = list(head_labels) if head_labels else [f"head {i}" for i in range(len(overlays))]
        columns = max(1, main.width // (small.width + 4))
        parts.append(tile(overlays, labels, columns=columns))
    return stack(parts)


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding of ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
