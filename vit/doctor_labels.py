"""Likely label errors and outliers: out-of-sample probabilities, cleanlab, k-NN distances.

Features come from ``--model`` (the pooled pre-logits features of a vit checkpoint, or of
pretrained weights by name from the local cache: :func:`feature_network`) or, without a model,
from a quick unsupervised learner: single-layer k-means features of 32 px thumbnails (Coates,
Lee & Ng, 2011: whitened 6x6 patches, a k-means dictionary, "triangle" activations, quadrant
sum-pooling). No pretrained weights are available offline, and on 2,000 CIFAR-10
images this learner gives better out-of-sample probabilities in seconds than the project's
ViT trained k-fold within the same budget (measured in docs/DOCTOR.md).

A logistic regression, cross-validated k-fold on those features, gives every image a probability
from a model that never saw it; ``cleanlab.filter.find_label_issues`` ranks the images whose
given label those probabilities contradict. With ``--model`` the network's own predictions are
in-sample (it was trained on most of these images) and optimistic, so its features are used the
same way instead. Outliers are images whose mean cosine distance to their nearest neighbours is
far beyond the others' (above Tukey's far-out fence, Q3 + 3 IQR).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from serve.preprocess import Preprocessing, decode_image

if TYPE_CHECKING:
    from vit.doctor import Issue, Report

THUMB = 32
PATCH = 6
ATOMS = 256
FOLDS = 5
NEIGHBOURS = 10
MIN_PER_CLASS = 2
DICTIONARY_IMAGES = 400  # thumbnails whose patches train the k-means dictionary
DICTIONARY_PATCHES = 20_000


def thumbnails(paths: list[str], side: int = THUMB, workers: int = 2) -> np.ndarray:
    """Every image as ``side x side`` RGB uint8 (central square, the shared decoder)."""
    geometry = Preprocessing(input_size=(side, side), crop_pct=1.0)

    def load(path: str) -> np.ndarray:
        return np.asarray(geometry.resize_and_crop(decode_image(path, preprocessing=geometry)))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL releases the GIL
        return np.stack(list(pool.map(load, paths, chunksize=64)))


def _patches(images: np.ndarray) -> np.ndarray:
    """(n, h, w, PATCH*PATCH*3) contrast-normalised float32 patches, stride 1."""
    from numpy.lib.stride_tricks import sliding_window_view

    windows = sliding_window_view(images.astype(np.float32) / 255.0, (PATCH, PATCH, 3), axis=(1, 2, 3))
    n, h, w = windows.shape[:3]
    flat = windows.reshape(n, h, w, -1)
    flat = flat - flat.mean(axis=-1, keepdims=True)
    return flat / np.sqrt((flat * flat).mean(axis=-1, keepdims=True) + 0.01)


class KMeansFeatures:
    """Coates-Ng single-layer features; fit on patches of the images themselves (unsupervised)."""

    def __init__(self, atoms: int = ATOMS, seed: int = 0) -> None:
        self.atoms, self.seed = atoms, seed

    def fit(self, images: np.ndarray, samples: int = DICTIONARY_PATCHES) -> KMeansFeatures:
        from sklearn.cluster import MiniBatchKMeans

        rng = np.random.default_rng(self.seed)
        patches = _patches(images).reshape(-1, PATCH * PATCH * 3)
        patches = patches[rng.choice(len(patches), min(samples, len(patches)), replace=False)]
        self.mean = patches.mean(axis=0)
        values, vectors = np.linalg.eigh(np.cov(patches - self.mean, rowvar=False))
        self.whiten = (vectors / np.sqrt(values + 0.1)) @ vectors.T  # ZCA: patches stop being all edges
        kmeans = MiniBatchKMeans(self.atoms, init="random", random_state=self.seed, n_init=1, batch_size=4096)
        self.centres = kmeans.fit((patches - self.mean) @ self.whiten).cluster_centers_.astype(np.float32)
        return self

    def transform(
        self, images: np.ndarray, chunk: int = 64, advance: Callable[[int], None] = lambda n: None
    ) -> np.ndarray:
        out = []
        c2 = (self.centres * self.centres).sum(axis=1)
        for start in range(0, len(images), chunk):
            patches = _patches(images[start : start + chunk])
            n, h, w, d = patches.shape
            x = (patches.reshape(-1, d) - self.mean) @ self.whiten
            dist = np.sqrt(np.maximum((x * x).sum(axis=1, keepdims=True) - 2 * x @ self.centres.T + c2, 0))
            act = np.maximum(dist.mean(axis=1, keepdims=True) - dist, 0).reshape(n, h, w, -1)
            hh, hw = h // 2, w // 2
            quads = [act[:, :hh, :hw], act[:, :hh, hw:], act[:, hh:, :hw], act[:, hh:, hw:]]
            out.append(np.concatenate([q.sum(axis=(1, 2)) for q in quads], axis=1))
            advance(n)
        return np.concatenate(out).astype(np.float32)


def feature_network(spec: str) -> tuple[Any, Preprocessing]:
    """The network whose pooled features describe the images, and how it is fed.

    ``spec`` is a vit checkpoint (``.ckpt``), or pretrained weights by name as
    ``--model.pretrained`` takes them (a timm tag such as ``vit_small_patch16_224.augreg_in21k``
    or ``hf-hub:ORG/NAME``, read from the local Hugging Face cache): timm builds it without a
    head, fed the way its pretrained config says.
    """
    from pathlib import Path

    from vit.pretrained import PretrainedUnavailable, create_pretrained, is_named

    path = Path(spec).expanduser()
    if path.suffix == ".ckpt" and path.is_file():
        from vit.checkpoint import load_checkpoint

        loaded = load_checkpoint(path)
        return loaded.net, loaded.preprocessing
    if not is_named(spec) or path.exists():
        raise ValueError(
            f"--model {spec}: neither a vit checkpoint (.ckpt) nor pretrained weights by name "
            "(a timm tag like vit_small_patch16_224.augreg_in21k, or hf-hub:ORG/NAME)"
        )
    import timm

    try:
        net = create_pretrained(spec, num_classes=0).eval()
    except PretrainedUnavailable as exc:  # the same words as for vit fit, under this flag's name
        raise ValueError(str(exc).replace("--model.pretrained", "--model", 1)) from exc
    cfg = timm.data.resolve_data_config(model=net)
    pre = Preprocessing(
        input_size=tuple(cfg["input_size"][1:]),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
        crop_mode="squash" if cfg.get("crop_mode") == "squash" else "center",  # timm's "border": centre
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=cfg["mean"],
        std=cfg["std"],
    )
    return net, pre


def model_features(
    spec: str, paths: list[str], advance: Callable[[int], None] = lambda n: None
) -> tuple[np.ndarray, int]:
    """Pooled pre-logits features of ``spec`` (:func:`feature_network`) for ``paths``, and its input side."""
    import torch

    net, pre = feature_network(spec)
    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), 64):
            batch = [pre(decode_image(p, preprocessing=pre)) for p in paths[start : start + 64]]
            tokens = net.forward_features(torch.from_numpy(np.stack(batch)))
            out.append(net.forward_head(tokens, pre_logits=True).float().numpy())
            advance(len(batch))
    return np.concatenate(out), int(pre.input_size[0])


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


def affordable(n: int, seconds_per_image: float, budget: float, fixed: float) -> int:
    """How many images the label check can cover within ``budget`` seconds."""
    if seconds_per_image <= 0:
        return n
    return max(0, min(n, int((budget - fixed) / seconds_per_image)))


def label_and_outlier_issues(
    report: Report,
    model: str | None = None,
    budget: float = 300.0,
    progress: bool = False,
    seed: int = 0,
    learner: str = "logistic",
) -> tuple[list[Issue], list[str], int | None]:
    """Label and outlier issues for the readable images of ``report``, notes, and the model input side.

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
    notes: list[str] = []
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
        chosen = np.arange(len(usable))
        with stage("features (model)", len(usable), progress) as advance:
            features, input_side = model_features(model, [item.path for item in usable], advance)
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
