"""Likely label errors and outliers: out-of-sample probabilities, cleanlab, k-NN distances.

Features come from :mod:`vit.doctor_features`: a network's (a vit checkpoint, pretrained
weights by name, or by default the pretrained photo features when they are cached) or a quick
k-means learner's.

A logistic regression, cross-validated k-fold on those features, gives every image a probability
from a model that never saw it; ``cleanlab.filter.find_label_issues`` ranks the images whose
given label those probabilities contradict. With ``--model`` the network's own predictions are
in-sample (it was trained on most of these images) and optimistic, so its features are used the
same way instead. Outliers are images whose mean cosine distance to their nearest neighbours is
far beyond the others' (above Tukey's far-out fence, Q3 + 3 IQR).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from vit.doctor_features import KMeansFeatures, affordable, model_features, resolve_features, thumbnails

if TYPE_CHECKING:
    from vit.doctor import Issue, Report

FOLDS = 5
NEIGHBOURS = 10
MIN_PER_CLASS = 2
DICTIONARY_IMAGES = 400  # thumbnails whose patches train the k-means dictionary


def out_of_sample_probabilities(
    features: np.ndarray, labels: np.ndarray, folds: int, seed: int = 0, learner: str = "logistic"
) -> np.ndarray:
    """k-fold cross-validated class probabilities: each image's from a model that never saw it.

    ``logistic``: a standardised logistic regression (the default; measured in docs/DOCTOR.md);
    ``knn``: the distance-weighted votes of the nearest images by cosine similarity.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if learner == "logistic":
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=300))
    elif learner == "knn":
        model = KNeighborsClassifier(NEIGHBOURS, weights="distance", metric="cosine")
    else:
        raise ValueError(f"learner must be logistic or knn, got {learner!r}")
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, labels, cv=split, method="predict_proba")


def outlier_scores(features: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, float]:
    """Mean cosine distance to the ``k`` nearest other images, and the far-out fence above which an image is an outlier."""
    from sklearn.neighbors import NearestNeighbors

    centred = features - features.mean(axis=0)
    k = min(k, len(features) - 1)
    distances, _ = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(centred).kneighbors(centred)
    scores = distances[:, 1:].mean(axis=1)
    q1, q3 = np.percentile(scores, [25, 75])
    return scores, float(q3 + 3 * (q3 - q1))


def label_and_outlier_issues(
    report: Report,
    model: str | None = None,
    budget: float = 300.0,
    progress: bool = False,
    seed: int = 0,
    learner: str = "logistic",
) -> tuple[list[Issue], list[str], int | None]:
    """Label and outlier issues for the readable images of ``report``, notes, and the model input side.

    ``model``: ``--model`` as given (:func:`vit.doctor_features.resolve_features`; None = auto).
    ``learner``: how the features become probabilities (:func:`out_of_sample_probabilities`).
    """
    from vit.doctor import Issue, stage

    start = time.monotonic()
    usable = [item for item in report.items if item.print is not None and item.print.reason is None]
    labels = np.array([item.label for item in usable])
    counts = np.bincount(labels, minlength=len(report.classes)) if len(labels) else np.zeros(0, int)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < MIN_PER_CLASS:
        return [], ["label check skipped: it needs two classes with at least two readable images each"], None
    model, note = resolve_features(model)
    notes: list[str] = [note] if note else []
    rng = np.random.default_rng(seed)
    if model is None:
        # The dictionary is learnt from a sample; the time it takes to thumbnail and describe
        # that sample says how many images the budget covers (logistic-regression folds cost
        # about as much again: docs/DOCTOR.md).
        probe = np.sort(rng.choice(len(usable), min(len(usable), DICTIONARY_IMAGES), replace=False))
        tick = time.monotonic()
        sample = thumbnails([usable[k].path for k in probe])
        describer = KMeansFeatures(seed=seed).fit(sample)
        fixed = time.monotonic() - tick
        tick = time.monotonic()
        describer.transform(sample[:64])
        per_image = 2 * ((time.monotonic() - tick) / min(64, len(sample)) + fixed / (2 * len(sample)))
        keep = affordable(len(usable), per_image, budget, time.monotonic() - start)
        chosen = np.arange(len(usable))
        if keep < len(usable):
            chosen = np.sort(rng.choice(len(usable), keep, replace=False))
            notes.append(f"label check covered {keep} of {len(usable)} images within the --budget")
        paths = [usable[k].path for k in chosen]
        with stage("thumbnails", len(paths), progress) as advance:
            images = thumbnails(paths)
            advance(len(paths))
        with stage("features (k-means)", len(paths), progress) as advance:
            features = describer.transform(images, advance=advance)
        input_side = None
    else:
        paths = [item.path for item in usable]
        with stage("features (model)", len(usable), progress) as advance:
            remaining = budget - (time.monotonic() - start)
            features, chosen, input_side = model_features(model, paths, remaining, seed, advance)
        if len(chosen) < len(usable):
            notes.append(f"label check covered {len(chosen)} of {len(usable)} images within the --budget")
        notes.append(
            "label check: the model's own predictions are in-sample (optimistic); its features "
            "were cross-validated with a logistic regression instead"
            if model.endswith(".ckpt")
            else f"label check: features of {model}, cross-validated with a logistic regression"
        )
    chosen_labels = labels[chosen]
    folds = int(min(FOLDS, np.bincount(chosen_labels)[np.bincount(chosen_labels) > 0].min()))
    if folds < 2:
        return [], [*notes, "label check skipped: too few images per class"], input_side
    items = [usable[k] for k in chosen]
    issues = _label_issues(report, items, features, chosen_labels, folds, progress, learner)
    scores, fence = outlier_scores(features)
    for k in np.argsort(-scores):
        if scores[k] <= fence:
            break
        issues.append(Issue("outlier", [usable[chosen[k]].relative], float(scores[k])))
    return issues, notes, input_side


def _label_issues(
    report: Report,
    items: list[Any],
    features: np.ndarray,
    labels: np.ndarray,
    folds: int,
    progress: bool,
    learner: str,
) -> list[Issue]:
    from cleanlab.filter import find_label_issues

    from vit.doctor import Issue, stage

    present = np.unique(labels)
    remap = {int(c): k for k, c in enumerate(present)}  # cleanlab wants labels 0..K-1
    dense = np.array([remap[int(c)] for c in labels])
    with stage(f"label check ({folds} folds)", 1, progress) as advance:
        probs = out_of_sample_probabilities(features, dense, folds, learner=learner)
        advance(1)
    ranked = find_label_issues(dense, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    issues = []
    for k in ranked:
        suggested = int(present[int(np.argmax(probs[k]))])
        issues.append(
            Issue(
                "label",
                [items[k].relative],
                float(1.0 - probs[k, dense[k]]),
                given=report.classes[int(labels[k])],
                suggested=report.classes[suggested],
            )
        )
    return issues
