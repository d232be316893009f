"""Compare OOD scores (MSP, energy, Mahalanobis) of a checkpoint on proxy out-of-distribution folders.

    python scripts/ood_compare.py CKPT IN_ROOT --out NAME=DIR [--out ...]
    python scripts/ood_compare.py --make-textures DIR      # random textures as PNG files

In-distribution: the test split of IN_ROOT when it has one (else its validation split); the
temperature is fitted on the validation split, Mahalanobis statistics on training images
(vit.trustfit's limits). Prints AUROC and FPR at 95% TPR per score and proxy (docs/TRUST.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from serve.trust import energy_score, msp_score, softmax
from vit.calibrate import fit_temperature
from vit.checkpoint import load_checkpoint
from vit.folder import discover, is_image_file
from vit.ood import auroc, fit_mahalanobis, fpr_at_95
from vit.trustfit import TRAIN_LIMIT, VAL_LIMIT, check_splits, collect, spread


def make_textures(root: Path, n: int = 600, size: int = 64, seed: int = 0) -> None:
    """Noise, blurred noise, stripes, checkerboards and colour blobs: images of no class."""
    rng = np.random.default_rng(seed)
    folder = root / "textures"
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        kind = i % 5
        if kind == 0:
            pixels = rng.integers(0, 256, (size, size, 3))
        elif kind == 1:
            noise = Image.fromarray(rng.integers(0, 256, (size, size, 3)).astype(np.uint8))
            pixels = np.asarray(noise.filter(ImageFilter.GaussianBlur(rng.uniform(1, 4))))
        elif kind == 2:
            angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 12)
            wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
            pixels = (wave[..., None] * 0.5 + 0.5) * rng.uniform(60, 255, 3)
        elif kind == 3:
            cells = int(rng.integers(2, 10))
            board = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2)[..., None]
            pixels = board * rng.uniform(0, 255, 3) + (1 - board) * rng.uniform(0, 255, 3)
        else:
            small = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
            pixels = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(folder / f"{i:04d}.png")
    print(f"{n} textures in {folder}")


def folder_samples(root: Path, limit: int) -> list[tuple[Path, int]]:
    files = sorted(p for p in root.rglob("*") if is_image_file(p))
    return spread([(p, 0) for p in files], limit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, nargs="?")
    parser.add_argument("data", type=Path, nargs="?")
    parser.add_argument("--out", action="append", default=[], help="NAME=DIR of out-of-distribution images")
    parser.add_argument("--limit", type=int, default=2000, help="at most this many images per test set")
    parser.add_argument("--make-textures", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    if args.make_textures:
        make_textures(args.make_textures)
        return 0
    if not args.checkpoint or not args.data:
        parser.error("CKPT and IN_ROOT are required")
    start = time.perf_counter()
    loaded = load_checkpoint(args.checkpoint)
    net, pre, labels = loaded.net, loaded.preprocessing, loaded.labels
    data = loaded.info.get("data") or {}
    train, val, layout = check_splits(
        args.data, labels, float(data.get("val_fraction", 0.1)), int(data.get("seed", 0))
    )
    test = discover(args.data).test
    index = {name: labels.index(name) for name in discover(args.data).classes}
    classes = discover(args.data).classes
    test = [(p, index[classes[c]]) for p, c in test]
    val_logits, _, val_targets = collect(net, spread(val, VAL_LIMIT), pre)
    temperature = fit_temperature(val_logits, val_targets)
    _, train_features, train_targets = collect(net, spread(train, TRAIN_LIMIT), pre)
    stats = fit_mahalanobis(train_features, train_targets, len(labels))
    in_name = "test split" if test else "val split"
    in_logits, in_features, in_targets = collect(net, spread(test or val, args.limit), pre)

    def scores(logits: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "msp (calibrated)": msp_score(softmax(logits, temperature)),
            "energy": energy_score(logits),
            "mahalanobis": stats.score(features),
        }

    in_scores = scores(in_logits, in_features)
    print(
        f"model {loaded.model_name} ({sum(p.numel() for p in net.parameters()):,} params); in: {in_name} of "
        f"{args.data} ({len(in_targets)} images, top-1 {100 * (in_logits.argmax(1) == in_targets).mean():.2f}%); "
        f"T = {temperature:.3f} on {len(val_targets)} val images ({layout}); "
        f"Mahalanobis on {len(train_targets)} train images, D = {train_features.shape[1]}, "
        f"shrinkage {stats.shrinkage:.3f}"
    )
    print("| proxy (out) | n out | score | AUROC | FPR95 |")
    print("|---|---|---|---|---|")
    for item in args.out:
        name, _, folder = item.partition("=")
        out_logits, out_features, _ = collect(net, folder_samples(Path(folder).expanduser(), args.limit), pre)
        for score, values in scores(out_logits, out_features).items():
            a, f = auroc(in_scores[score], values), fpr_at_95(in_scores[score], values)
            print(f"| {name} | {len(out_logits)} | {score} | {a:.4f} | {100 * f:.2f}% |")
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
