"""vit/ood.py: Mahalanobis statistics, acceptance threshold, AUROC and FPR95."""

from __future__ import annotations

import numpy as np
import pytest

from vit.ood import acceptance_threshold, auroc, fit_mahalanobis, fpr_at_95


@pytest.mark.parametrize("accept", [0.5, 0.9, 0.95, 0.99])
def test_threshold_hits_the_requested_acceptance(accept: float) -> None:
    scores = np.random.default_rng(1).normal(size=1000)
    threshold = acceptance_threshold(scores, accept)
    assert (scores <= threshold).mean() == pytest.approx(accept, abs=1e-3)
    assert (scores < threshold).mean() < accept  # the smallest threshold that reaches it


def test_threshold_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="ood-accept"):
        acceptance_threshold(np.ones(3), 1.5)


def test_auroc_and_fpr95_ends() -> None:
    inside = np.linspace(0, 1, 100)
    assert auroc(inside, inside + 2) == 1.0 and fpr_at_95(inside, inside + 2) == 0.0
    assert auroc(inside, inside - 2) == 0.0 and fpr_at_95(inside, inside - 2) == 1.0


def test_mahalanobis_separates_far_points_and_matches_the_formula() -> None:
    rng = np.random.default_rng(0)
    cov = np.array([[4.0, 1.5], [1.5, 1.0]])
    means = np.array([[0.0, 0.0], [8.0, 0.0]])
    targets = np.repeat([0, 1], 500)
    features = means[targets] + rng.multivariate_normal([0, 0], cov, 1000)
    stats = fit_mahalanobis(features, targets, 2)
    point = np.array([1.0, 2.0])
    precision = np.linalg.inv(np.cov((features - means[targets]).T))
    expected = min(float((point - m) @ precision @ (point - m)) for m in stats.means)
    assert stats.score(point[None])[0] == pytest.approx(expected, rel=0.05)
    assert stats.score(np.array([[4.0, 10.0]]))[0] > stats.score(np.array([[8.0, 0.5]]))[0] * 10


def test_mahalanobis_needs_every_class() -> None:
    with pytest.raises(ValueError, match="class index 2"):
        fit_mahalanobis(np.zeros((4, 2)), np.array([0, 0, 1, 1]), 3)
