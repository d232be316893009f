"""Out-of-distribution scores: Mahalanobis statistics, the acceptance threshold, AUROC and FPR95.

Scores are "higher = less like the training data" throughout; an image is accepted (known)
when its score is at or below the threshold. numpy + scikit-learn, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MahalanobisStats:
    """Class means and a shared covariance of training features, as the in-graph score uses them.

    ``whiten`` is a ``[D, D]`` matrix W with ``W Wᵀ = Σ⁻¹``, so the squared distance of a feature
    f to class c is ``‖(f - μ_c) W‖²``; ``means`` are the class means ``[C, D]``.
    """

    means: np.ndarray
    whiten: np.ndarray
    shrinkage: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean, per row of ``features`` [N, D]."""
        z = np.asarray(features, np.float64) @ self.whiten
        centres = self.means.astype(np.float64) @ self.whiten
        return ((z[:, None, :] - centres[None]) ** 2).sum(-1).min(axis=1)


def fit_mahalanobis(features: np.ndarray, targets: np.ndarray, classes: int) -> MahalanobisStats:
    """Class means and a Ledoit-Wolf shrunk shared covariance (Lee et al. 2018's tied covariance).

    Shrinkage keeps the inverse stable when there are few images per feature dimension (the
    digits demo has ~1,500 training images for 96 dimensions).
    """
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, np.float64)
    targets = np.asarray(targets)
    means = np.zeros((classes, f.shape[1]))
    for c in range(classes):
        rows = f[targets == c]
        if len(rows) == 0:
            raise ValueError(f"fit_mahalanobis: no training features for class index {c}")
        means[c] = rows.mean(axis=0)
    estimator = LedoitWolf(assume_centered=True).fit(f - means[targets])
    # W Wᵀ = Σ⁻¹ from the eigen-decomposition of the shrunk covariance, eigenvalues floored: with
    # very few images (or features that barely vary) the covariance is near singular and a
    # Cholesky factor of the precision fails in floating point.
    values, vectors = np.linalg.eigh(estimator.covariance_)
    floor = max(float(values.max(initial=0.0)) * 1e-6, 1e-12)
    whiten = vectors / np.sqrt(np.maximum(values, floor))
    return MahalanobisStats(means.astype(np.float32), whiten.astype(np.float32), float(estimator.shrinkage_))


def acceptance_threshold(scores: np.ndarray, accept: float = 0.95) -> float:
    """The threshold accepting ``accept`` of ``scores`` (the smallest t with share(score <= t) >= accept)."""
    if not 0.0 < accept <= 1.0:
        raise ValueError(f"--ood-accept must be in (0, 1], got {accept}")
    s = np.sort(np.asarray(scores, np.float64))
    if len(s) == 0:
        raise ValueError("acceptance_threshold: no scores")
    return float(s[int(np.ceil(accept * len(s))) - 1])


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve for telling out-of-distribution images (positives) by their score."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(labels, np.r_[in_scores, out_scores]))


def fpr_at_95(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Share of out-of-distribution images accepted at the threshold that accepts 95% of the in-distribution ones."""
    threshold = acceptance_threshold(in_scores, 0.95)
    return float((np.asarray(out_scores) <= threshold).mean())
