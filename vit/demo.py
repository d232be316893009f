"""``vit demo``: digits image folder -> train -> export -> predict -> explain, on the CPU.

The data is scikit-learn's bundled 8x8 digits (no download), written out as upscaled PNGs so
the whole pipeline runs on real image files, exactly as it would on a user's folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def write_digits(root: Path, size: int = 32) -> int:
    """scikit-learn's digits as ``root/<digit>/<index>.png`` (grey, ``size`` px). Returns the count."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    existing = sum(1 for _ in root.glob("*/*.png")) if root.is_dir() else 0
    if existing == len(digits.target):
        return existing
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        grey = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, "L").resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / f"{index:04d}.png")
    return len(digits.target)


def best_score(checkpoint: Path) -> float | None:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_score") is not None:
            return float(value["best_model_score"])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vit demo", description=__doc__)
    parser.add_argument(
        "--data", type=Path, default=Path("data/digits"), help="where to write the image folder"
    )
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="run folder")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's max_epochs")
    args, extra = parser.parse_known_args(argv)
    if not DEMO_CONFIG.is_file():
        parser.error(f"demo preset {DEMO_CONFIG} not found (run the demo from a source checkout)")

    count = write_digits(args.data)
    print(f"[demo] {count} digit images in {args.data}/<digit>/")

    from vit.cli import main as vit_main

    fit_args = ["fit", "--config", str(DEMO_CONFIG), "--data.root", str(args.data)]
    fit_args += ["--trainer.default_root_dir", str(args.run)]
    if args.epochs is not None:
        fit_args += ["--trainer.max_epochs", str(args.epochs)]
    vit_main(fit_args + extra)

    best = args.run / "checkpoints" / "best.ckpt"
    score = best_score(best)
    logs = sorted((args.run / "logs").glob("version_*"))
    print(f"[demo] best validation top-1: {score:.2%}" if score is not None else "[demo] no validation score")
    print(f"[demo] checkpoint: {best}")
    if logs:
        print(f"[demo] logs and confusion matrix: {logs[-1]}")

    # Export with the attention output, verified against PyTorch on real digit images.
    onnx_path = args.run / "model.onnx"
    if vit_main(
        ["export", str(best), "-o", str(onnx_path), "--check-data", str(args.data), "--with-attention"]
    ):
        print("[demo] export self-check failed", file=sys.stderr)
        return 1
    samples = [str(sorted((args.data / str(digit)).glob("*.png"))[0]) for digit in (0, 3, 7)]
    print("[demo] onnxruntime predictions for a few digits:")
    vit_main(["predict", str(onnx_path), *samples, "--top-k", "3", "--no-progress"])
    explain_dir = args.run / "explain"
    vit_main(["explain", str(best), *samples, "-o", str(explain_dir)])
    print(f"[demo] attention overlays: {explain_dir}/")
    print(f"[demo] serve it: vit serve {onnx_path}   (then open http://127.0.0.1:8000/)")
    return 0
