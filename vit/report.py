"""Per-class accuracy table and confusion-matrix picture (numpy + PIL; shared by fit and eval)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vit.atomic import write_atomic


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Row-normalised diagonal: recall of each class (NaN where a class has no samples)."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


def format_per_class_table(
    confusion: np.ndarray, class_names: list[str], title: str = "per-class accuracy"
) -> str:
    accuracy = per_class_accuracy(confusion)
    totals = confusion.sum(axis=1)
    width = max([len(n) for n in class_names] + [5])
    lines = [title, f"  {'class':<{width}}  {'n':>6}  {'acc':>6}"]
    for name, n, acc in zip(class_names, totals, accuracy, strict=True):
        shown = "   n/a" if np.isnan(acc) else f"{100 * acc:5.1f}%"
        lines.append(f"  {name:<{width}}  {int(n):>6}  {shown}")
    overall = np.trace(confusion) / max(confusion.sum(), 1)
    lines.append(f"  {'all':<{width}}  {int(confusion.sum()):>6}  {100 * overall:5.1f}%")
    return "\n".join(lines)


def render_confusion_matrix(confusion: np.ndarray, class_names: list[str], cell: int = 28) -> Image.Image:
    """Rows are true classes, columns predictions; shade = share of the row."""
    n = len(class_names)
    cell = max(10, min(cell, 900 // max(n, 1)))
    font = ImageFont.load_default()
    label_w = 8 + 7 * min(max(len(c) for c in class_names), 18)
    size = (label_w + n * cell + 10, label_w + n * cell + 10)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    for i in range(n):
        for j in range(n):
            shade = int(255 * (1 - rows[i, j]))
            x0, y0 = label_w + j * cell, label_w + i * cell
            draw.rectangle(
                [x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(220, 220, 220)
            )
            if cell >= 22 and confusion[i, j]:
                colour = "white" if rows[i, j] > 0.5 else "black"
                draw.text((x0 + 2, y0 + cell // 3), str(int(confusion[i, j])), fill=colour, font=font)
    for k, name in enumerate(class_names):
        short = name[:18]
        draw.text((4, label_w + k * cell + cell // 3), short, fill="black", font=font)
        column = Image.new("RGBA", (label_w, cell), (255, 255, 255, 0))
        ImageDraw.Draw(column).text((4, cell // 3), short, fill="black", font=font)
        rotated = column.rotate(90, expand=True)
        image.paste(rotated, (label_w + k * cell, 0), rotated)
    return image


def write_confusion_matrix_png(confusion: np.ndarray, class_names: list[str], path: Path) -> None:
    import io

    buffer = io.BytesIO()
    render_confusion_matrix(confusion, class_names).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
