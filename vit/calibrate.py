"""Temperature scaling and the calibration metrics (numpy + scipy; no torch, so ONNX eval stays torch-free).

Temperature scaling (Guo et al. 2017): one scalar T > 0 dividing the logits, fitted to minimise
the negative log-likelihood on held-out images; it changes no prediction, only the scores.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from serve.render import font
from serve.trust import softmax
from vit.atomic import write_atomic

ECE_BINS = 15
LOG_T_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]: beyond that the logits carry no usable ranking


def nll(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = probabilities[np.arange(len(targets)), targets]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def brier(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean over images of the squared distance to the one-hot target, summed over classes."""
    onehot = np.eye(probabilities.shape[1])[targets]
    return float(((probabilities - onehot) ** 2).sum(axis=1).mean())


def reliability(
    probabilities: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: image count, mean confidence, accuracy (NaN when empty)."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == targets).astype(np.float64)
    # Bins are (lo, hi]: the first bin also takes confidence 0 (torchmetrics' binning).
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, confidence, bins) / count
        accuracy = np.bincount(index, correct, bins) / count
    return {"count": count, "confidence": mean_conf, "accuracy": accuracy}


def ece(probabilities: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (share of images) x |accuracy - confidence|."""
    r = reliability(probabilities, targets, bins)
    filled = r["count"] > 0
    gaps = np.abs(r["accuracy"][filled] - r["confidence"][filled])
    return float((r["count"][filled] / r["count"].sum() * gaps).sum())


def metrics(probabilities: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """top-1, NLL, Brier and ECE (15 bins) of one set of probabilities."""
    return {
        "top1": float((probabilities.argmax(axis=1) == targets).mean()),
        "nll": nll(probabilities, targets),
        "brier": brier(probabilities, targets),
        "ece": ece(probabilities, targets),
    }


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T minimising NLL of ``softmax(logits / T)``, searched on log T (bounded, one dimension)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, np.float64)
    targets = np.asarray(targets)
    if len(logits) == 0:
        raise ValueError("fit_temperature: no logits")

    def loss(log_t: float) -> float:
        return nll(softmax(logits, float(np.exp(log_t))), targets)

    result = minimize_scalar(loss, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def calibrate(logits: np.ndarray, targets: np.ndarray, fitted_on: str = "") -> dict[str, Any]:
    """Fit T and measure before/after: the ``vit.calibration`` metadata object."""
    temperature = fit_temperature(logits, targets)
    return {
        "temperature": temperature,
        "fitted_on": fitted_on,
        "metrics": before_after(logits, targets, temperature),
    }


def before_after(logits: np.ndarray, targets: np.ndarray, temperature: float) -> dict[str, Any]:
    """Metrics at T = 1 and at ``temperature``, plus the image count."""
    return {
        "n": int(len(targets)),
        "before": metrics(softmax(logits), targets),
        "after": metrics(softmax(logits, temperature), targets),
    }


def render_reliability(curves: dict[str, dict[str, np.ndarray]], size: int = 360) -> Image.Image:
    """Reliability diagram: accuracy against confidence per bin, one curve per entry, diagonal = calibrated."""
    pad, width = 44, size
    image = Image.new("RGB", (width + pad + 12, width + pad + 12 + 18 * len(curves)), "white")
    draw = ImageDraw.Draw(image)
    face = font(11)

    def point(x: float, y: float) -> tuple[float, float]:
        return pad + x * width, 8 + (1 - y) * width

    draw.rectangle([point(0, 1), point(1, 0)], outline=(120, 120, 120))
    draw.line([point(0, 0), point(1, 1)], fill=(180, 180, 180), width=1)
    for tick in (0.0, 0.5, 1.0):
        draw.text((point(tick, 0)[0] - 8, point(tick, 0)[1] + 3), f"{tick:g}", fill="black", font=face)
        draw.text((4, point(0, tick)[1] - 6), f"{tick:g}", fill="black", font=face)
    draw.text((pad + width // 2 - 30, width + 22), "confidence", fill="black", font=face)
    colours = [(200, 70, 40), (40, 90, 200), (40, 150, 60)]
    for i, (name, r) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        filled = r["count"] > 0
        points = [point(c, a) for c, a in zip(r["confidence"][filled], r["accuracy"][filled], strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((pad, width + 40 + 18 * i), f"{name} (accuracy vs confidence)", fill=colour, font=face)
    return image


def write_reliability_png(curves: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """The reliability diagram as a PNG, written atomically."""
    buffer = io.BytesIO()
    render_reliability(curves).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
