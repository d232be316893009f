"""Run pictures and tables (numpy + matplotlib; shared by fit and eval): per-class accuracy,
the labelled confusion matrix and the training curves."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

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


MANY_CLASSES = 20  # above this, cells show row shares without numbers


def _figure_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def confusion_matrix_png(confusion: np.ndarray, class_names: list[str], title: str = "") -> bytes:
    """PNG of the confusion matrix: rows "true", columns "predicted", class names on both axes,
    accuracy in the title; counts in the cells, or row shares (normalised) for many classes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(class_names)
    many = n > MANY_CLASSES
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    side = min(4 + 0.45 * n, 24)
    figure, axes = plt.subplots(figsize=(side, side))
    shown = axes.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    step = max(1, n // 60)  # at most ~60 labels per axis stay readable
    ticks = np.arange(0, n, step)
    axes.set_xticks(ticks, [class_names[i][:20] for i in ticks], rotation=90 if n > 6 else 0)
    axes.set_yticks(ticks, [class_names[i][:20] for i in ticks])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    normalised = ", rows normalised" if many else ""
    axes.set_title(
        f"{title + ': ' if title else ''}accuracy {100 * accuracy:.1f}% ({int(confusion.sum())} images{normalised})"
    )
    if not many:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    colour = "white" if rows[i, j] > 0.5 else "black"
                    axes.text(
                        j, i, str(int(confusion[i, j])), ha="center", va="center", color=colour, fontsize=8
                    )
    return _figure_png(figure)


def write_confusion_matrix_png(
    confusion: np.ndarray, class_names: list[str], path: Path, title: str = ""
) -> None:
    write_atomic(path, confusion_matrix_png(confusion, class_names, title))


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """Lightning's CSVLogger ``metrics.csv`` -> column name -> float array (NaN where empty)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {key for row in rows for key in row}
    return {
        key: np.array([float(row[key]) if row.get(key) not in (None, "") else np.nan for row in rows])
        for key in columns
    }


def curves_png(metrics: dict[str, np.ndarray]) -> bytes:
    """Train loss, val loss and val top-1 against epochs and against training minutes (two panels)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    nan = np.full(len(metrics.get("step", [])), np.nan)
    step, epoch = metrics.get("step", nan), metrics.get("epoch", nan)
    train, val_loss, val_acc = (metrics.get(k, nan) for k in ("train/loss_epoch", "val/loss", "val/acc1"))
    minutes = metrics.get("train/minutes", nan)
    known = ~np.isnan(minutes) & ~np.isnan(step)
    if known.any():  # train-loss rows carry no minutes: place them by their step
        minutes = np.interp(step, step[known], minutes[known])
    figure, panels = plt.subplots(1, 2, figsize=(11, 4))
    for axes, x, label in ((panels[0], epoch + 1, "epoch"), (panels[1], minutes, "training minutes")):
        for values, name, style in ((train, "train loss", "-"), (val_loss, "val loss", "--")):
            keep = ~np.isnan(values) & ~np.isnan(x)
            axes.plot(x[keep], values[keep], style, marker=".", label=name)
        axes.set_xlabel(label)
        axes.set_ylabel("loss")
        right = axes.twinx()
        keep = ~np.isnan(val_acc) & ~np.isnan(x)
        right.plot(x[keep], 100 * val_acc[keep], color="tab:green", marker="o", label="val top-1")
        right.set_ylabel("val top-1 (%)")
        lines = axes.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        axes.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    best = np.nanmax(val_acc) if not np.isnan(val_acc).all() else float("nan")
    figure.suptitle(f"best val top-1 {100 * best:.2f}%")
    figure.tight_layout()
    return _figure_png(figure)
