"""What describes each image for the doctor's label and outlier checks.

* ``--model CKPT``: the pooled pre-logits features of a vit checkpoint;
* ``--model NAME``: pretrained weights by name (a timm tag or ``hf-hub:ORG/NAME``), loaded by
  timm from the Hugging Face cache, downloaded on a miss where there is internet;
* ``--model auto`` (the default): :data:`DEFAULT_FEATURES` when it is already in the local
  cache (auto never downloads: offline, a miss would cost huggingface_hub's retries), else
* ``--model none``: a quick unsupervised learner, single-layer k-means features of 32 px
  thumbnails (Coates, Lee & Ng, 2011: whitened 6x6 patches, a k-means dictionary, "triangle"
  activations, quadrant sum-pooling), which on 2,000 CIFAR-10 images gave better out-of-sample
  probabilities in seconds than the project's ViT trained k-fold in the same budget
  (docs/DOCTOR.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from serve.preprocess import Preprocessing, decode_image

THUMB = 32
PATCH = 6
ATOMS = 256
DICTIONARY_PATCHES = 20_000
# Self-supervised DINOv2 features are what k-NN and linear probes on photos do best with. The
# small one is fed at 196 px, 14 x 14 patches (timm resamples its position embeddings): its
# native 518 px has seven times the tokens, too slow for a CPU budget (docs/DOCTOR.md).
DEFAULT_FEATURES = "vit_small_patch14_dinov2.lvd142m"
FEED_SIDES = {DEFAULT_FEATURES: 196}  # named weights fed at another side than their native one
AUTO, NONE = "auto", "none"
PROBE_IMAGES = 32  # timed first batch that says how many images the budget covers


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


def affordable(n: int, seconds_per_image: float, budget: float, fixed: float) -> int:
    """How many images the label check can cover within ``budget`` seconds."""
    if seconds_per_image <= 0:
        return n
    return max(0, min(n, int((budget - fixed) / seconds_per_image)))


def cached(name: str) -> bool:
    """Whether the weights timm loads for ``name`` are in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    from vit.pretrained import PretrainedUnavailable, hub_id

    try:
        repository = hub_id(name)
    except PretrainedUnavailable:
        return False
    return any(
        isinstance(try_to_load_from_cache(repository, filename), str)
        for filename in ("model.safetensors", "pytorch_model.bin")
    )


def resolve_features(spec: str | None) -> tuple[str | None, str | None]:
    """``--model`` as given -> (what gives the features, None for k-means; a note or None)."""
    if spec is None or spec == AUTO:
        if cached(DEFAULT_FEATURES):
            return DEFAULT_FEATURES, None
        return None, (
            "label check: quick k-means features (no pretrained features in the Hugging Face "
            f"cache); on photos, features pretrained on photos find label errors far more "
            f"precisely: `hf download timm/{DEFAULT_FEATURES}` once, or pass --model NAME"
        )
    if spec == NONE:
        return None, None
    return spec, None


def feature_network(spec: str) -> tuple[Any, Preprocessing]:
    """The network whose pooled features describe the images, and how it is fed.

    ``spec`` is a vit checkpoint (``.ckpt``), or pretrained weights by name as
    ``--model.pretrained`` takes them (a timm tag such as ``vit_small_patch16_224.augreg_in21k``
    or ``hf-hub:ORG/NAME``): timm builds it without a head, fed the way its pretrained config
    says, at the side :data:`FEED_SIDES` gives where it names one.
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

    size = {"img_size": FEED_SIDES[spec]} if spec in FEED_SIDES else {}
    try:
        net = create_pretrained(spec, num_classes=0, **size).eval()
    except PretrainedUnavailable as exc:  # the same words as for vit fit, under this flag's name
        raise ValueError(str(exc).replace("--model.pretrained", "--model", 1)) from exc
    cfg = timm.data.resolve_data_config(model=net)
    side = size.get("img_size")
    pre = Preprocessing(
        input_size=(side, side) if side else tuple(cfg["input_size"][1:]),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
        crop_mode="squash" if cfg.get("crop_mode") == "squash" else "center",  # timm's "border": centre
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=cfg["mean"],
        std=cfg["std"],
    )
    return net, pre


def model_features(
    spec: str,
    paths: list[str],
    budget: float | None = None,
    seed: int = 0,
    advance: Callable[[int], None] = lambda n: None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pooled pre-logits features of ``spec`` (:func:`feature_network`) for the images of
    ``paths`` that ``budget`` seconds cover (all without one), those images' indices, and the
    network's input side.

    A first batch of :data:`PROBE_IMAGES` random images is timed; the budget then covers as many
    as that speed allows (the folds and cleanlab cost little beside a network on a CPU).
    """
    import torch

    start = time.monotonic()
    net, pre = feature_network(spec)
    order = np.random.default_rng(seed).permutation(len(paths))

    def describe(indices: np.ndarray) -> np.ndarray:
        batch = [pre(decode_image(paths[k], preprocessing=pre)) for k in indices]
        with torch.inference_mode():
            tokens = net.forward_features(torch.from_numpy(np.stack(batch)))
            return net.forward_head(tokens, pre_logits=True).float().numpy()

    tick = time.monotonic()
    out = [describe(order[:PROBE_IMAGES])]
    per_image = (time.monotonic() - tick) / min(PROBE_IMAGES, len(paths))
    advance(len(out[0]))
    keep = (
        len(paths) if budget is None else affordable(len(paths), per_image, budget, time.monotonic() - start)
    )
    chosen = order[: max(keep, min(PROBE_IMAGES, len(paths)))]
    for first in range(PROBE_IMAGES, len(chosen), 64):
        out.append(describe(chosen[first : first + 64]))
        advance(len(out[-1]))
    features = np.concatenate(out)
    ranks = np.argsort(chosen)
    return features[ranks], chosen[ranks], int(pre.input_size[0])
