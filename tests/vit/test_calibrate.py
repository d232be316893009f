"""vit/calibrate.py: temperature fit, NLL/Brier/ECE, reliability diagram."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from serve.trust import softmax
from vit.calibrate import brier, calibrate, ece, fit_temperature, nll, reliability, write_reliability_png


def sampled(temperature: float, n: int = 4000, classes: int = 5, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / temperature): that T is the true one."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, classes))
    probs = softmax(logits, temperature)
    targets = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, targets


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_recovers_a_known_temperature(true_t: float) -> None:
    logits, targets = sampled(true_t)
    assert fit_temperature(logits, targets) == pytest.approx(true_t, rel=0.1)


def test_calibration_lowers_nll_and_keeps_top1() -> None:
    logits, targets = sampled(2.5)
    result = calibrate(logits, targets, "synthetic")
    before, after = result["metrics"]["before"], result["metrics"]["after"]
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert after["top1"] == before["top1"]
    assert result["fitted_on"] == "synthetic" and result["metrics"]["n"] == len(targets)


def test_ece_by_hand() -> None:
    # Four images, two classes. Confidences 0.9, 0.9 (bin 14: (0.8667, 0.9333]) and 0.6, 0.6 (bin 9).
    # Bin 14: both right -> |1 - 0.9| = 0.1; bin 9: one right -> |0.5 - 0.6| = 0.1.
    # ECE = 2/4 * 0.1 + 2/4 * 0.1 = 0.1.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    targets = np.array([0, 0, 0, 0])
    assert ece(probs, targets) == pytest.approx(0.1)
    bins = reliability(probs, targets)
    assert bins["count"].sum() == 4 and bins["count"][13] == 2 and bins["count"][8] == 2


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert ece(probs, np.array([0, 0])) == 0.0


def test_nll_and_brier_by_hand() -> None:
    probs = np.array([[0.5, 0.5], [0.8, 0.2]])
    targets = np.array([0, 1])
    assert nll(probs, targets) == pytest.approx(-(np.log(0.5) + np.log(0.2)) / 2)
    assert brier(probs, targets) == pytest.approx(((0.25 + 0.25) + (0.64 + 0.64)) / 2)


def test_reliability_png(tmp_path) -> None:
    logits, targets = sampled(2.0, n=300)
    curves = {
        "before": reliability(softmax(logits), targets),
        "after": reliability(softmax(logits, 2.0), targets),
    }
    path = tmp_path / "reliability.png"
    write_reliability_png(curves, path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100
