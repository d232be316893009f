"""``vit explain MODEL IMAGE… -o OUT_DIR``: attention heatmaps over the images the model saw.

MODEL is a ``vit fit`` checkpoint (rollout or last-layer attention, plus per-head maps) or an
ONNX file exported with ``vit export --with-attention`` (its built-in rollout map only; torch
is not imported on that path). Each image is decoded and preprocessed exactly as for
prediction, and the map is drawn over the resized, centre-cropped view the model was fed.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serve.preprocess import ImageError, Preprocessing, decode_image
from serve.render import explanation_figure, png_bytes
from serve.trust import Trust, softmax, top_k
from vit.arguments import parse_or_exit_code
from vit.atomic import write_atomic

METHODS = ("rollout", "last-layer")
HEAD_FUSIONS = ("mean", "max", "min")


class ExplainError(Exception):
    """A problem with the model or the options; the message is shown as is."""


@dataclass
class Explanation:
    """One batch: class logits, the main maps and (checkpoints only) per-head maps."""

    logits: np.ndarray  # [N, classes]
    maps: np.ndarray  # [N, grid_h, grid_w], each summing to 1
    heads: np.ndarray | None  # [N, heads, grid_h, grid_w] last-layer attention, or None
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. the in-graph OOD score

    @property
    def probs(self) -> np.ndarray:
        """Class probabilities [N, classes]."""
        return softmax(self.logits)


@dataclass
class Explainer:
    labels: list[str]
    preprocessing: Preprocessing
    describe: str  # the method line of the caption
    head_note: str  # what the per-head grid shows, or why there is none
    run: Callable[[np.ndarray], Explanation]
    trust: Trust = field(default_factory=Trust)  # the caption's scores are calibrated (serve/trust.py)


def checkpoint_explainer(path: Path, method: str, head_fusion: str, discard_ratio: float) -> Explainer:
    """Torch route: attention probabilities read from the model; rollout or last layer computed here."""
    import torch

    from vit.attention import forward_with_attention, last_layer_cls_attention, rollout, token_layout
    from vit.checkpoint import load_checkpoint

    loaded = load_checkpoint(path)
    net = loaded.net
    layout = token_layout(net, loaded.preprocessing.input_size)
    args = (layout.num_prefix_tokens, layout.grid, layout.has_class_token)

    def run(batch: np.ndarray) -> Explanation:
        with torch.inference_mode():
            logits, attn = forward_with_attention(net, torch.from_numpy(batch))
        heads = last_layer_cls_attention(attn, *args)
        if method == "rollout":
            maps = rollout(attn, head_fusion, discard_ratio, *args)
        else:  # fuse the renormalised per-head maps, then renormalise the fused map
            fused = {"mean": heads.mean, "max": heads.amax, "min": heads.amin}[head_fusion](dim=1)
            maps = fused / fused.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        return Explanation(logits.float().numpy(), maps.numpy(), heads.numpy())

    readout = "class token" if layout.has_class_token else "mean of patch tokens (global pool)"
    if method == "rollout":
        describe = (
            f"attention rollout ({head_fusion} over heads, discard {discard_ratio:g}); read from {readout}"
        )
    else:
        describe = f"last-layer attention ({head_fusion} over heads); read from {readout}"
    note = f"per head: block {len(net.blocks)} (last) attention"
    trust = Trust((loaded.info.get("calibration") or {}).get("temperature", 1.0))
    return Explainer(loaded.labels, loaded.preprocessing, describe, note, run, trust)


def onnx_explainer(path: Path) -> Explainer:
    """Torch-free route: the ``attention`` output of an ONNX file exported with ``--with-attention``."""
    import onnxruntime as ort

    from serve.metadata import MetadataError, ModelMetadata

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExplainError(f"{path}: cannot load ONNX model ({exc})") from exc
    try:
        meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    except MetadataError as exc:
        raise ExplainError(f"{path}: {exc}") from exc
    outputs = {o.name for o in session.get_outputs()}
    logits_name = meta.outputs.get("logits") or "logits"
    attention_name = meta.outputs.get("attention")
    if not attention_name or attention_name not in outputs:
        raise ExplainError(
            f"{path} has no attention output; re-export it with `vit export CHECKPOINT --with-attention`"
        )
    model_input = session.get_inputs()[0]
    dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32

    trust = Trust.from_metadata(meta)
    score = [trust.score_output] if trust.score_output in outputs else []

    def run(batch: np.ndarray) -> Explanation:
        results = session.run([logits_name, attention_name, *score], {model_input.name: batch.astype(dtype)})
        extra = {score[0]: results[2]} if score else {}
        return Explanation(
            np.asarray(results[0], np.float32), np.asarray(results[1], np.float32), None, extra
        )

    note = "per-head maps need the checkpoint (the ONNX file carries only the rollout map)"
    describe = "attention rollout as exported (ONNX)"
    return Explainer(meta.labels, meta.preprocessing, describe, note, run, trust)


def output_paths(images: list[Path], out_dir: Path) -> list[Path]:
    """``OUT_DIR/<stem>_explain.png``, numbered when two inputs share a stem."""
    seen: dict[str, int] = {}
    paths = []
    for image in images:
        n = seen.get(image.stem, 0)
        seen[image.stem] = n + 1
        paths.append(out_dir / f"{image.stem}{f'-{n}' if n else ''}_explain.png")
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit explain",
        description="Draw where the model's self-attention looks, over each image as the model saw it.",
    )
    parser.add_argument(
        "model", type=Path, help="vit checkpoint (.ckpt) or ONNX file exported --with-attention"
    )
    parser.add_argument("images", type=Path, nargs="+", help="image files")
    parser.add_argument("-o", "--out-dir", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--method", choices=METHODS, default="rollout", help="map to draw (default: rollout)")
    parser.add_argument(
        "--head-fusion", choices=HEAD_FUSIONS, default=None, help="how heads are combined (mean)"
    )
    parser.add_argument(
        "--discard-ratio", type=float, default=None, help="rollout: drop this share of weakest links (0)"
    )
    parser.add_argument("--top-k", type=int, default=3, help="labels in the caption (default: 3)")
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="heatmap opacity where attention peaks, in [0, 1] (0.5)"
    )
    parser.add_argument("--size", type=int, default=256, help="shorter side of the drawn image in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    return parser


def make_explainer(args: argparse.Namespace) -> Explainer:
    if not args.model.is_file():
        raise ExplainError(f"model {args.model} not found")
    if args.discard_ratio is not None and not 0.0 <= args.discard_ratio < 1.0:
        raise ExplainError(f"--discard-ratio must be in [0, 1), got {args.discard_ratio}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ExplainError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.model.suffix.lower() == ".onnx":
        if args.method != "rollout":
            raise ExplainError(
                "--method last-layer needs a checkpoint; an ONNX file carries only the rollout map"
            )
        if args.head_fusion is not None or args.discard_ratio is not None:
            raise ExplainError(
                "--head-fusion/--discard-ratio are fixed when exporting; drop them for an ONNX model"
            )
        return onnx_explainer(args.model)
    try:
        return checkpoint_explainer(
            args.model, args.method, args.head_fusion or "mean", args.discard_ratio or 0.0
        )
    except (ValueError, KeyError, RuntimeError, OSError, pickle.UnpicklingError) as exc:
        raise ExplainError(f"{args.model}: {exc}") from exc


def main(argv: list[str]) -> int:
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        explainer = make_explainer(args)
    except ExplainError as exc:
        print(f"vit explain: {exc}", file=sys.stderr)
        return 2
    pre = explainer.preprocessing
    failed = 0
    targets = list(zip(args.images, output_paths(args.images, args.out_dir), strict=True))
    step = max(args.batch_size, 1)
    for start in range(0, len(targets), step):
        views, batch, outs = [], [], []
        for image_path, out in targets[start : start + step]:
            try:
                view = pre.resize_and_crop(decode_image(image_path, preprocessing=pre))
            except ImageError as exc:
                print(f"vit explain: skipped {exc}", file=sys.stderr)
                failed += 1
                continue
            views.append(view)
            batch.append(pre.normalize(np.asarray(view)))
            outs.append((image_path, out))
        if not batch:
            continue
        result = explainer.run(np.stack(batch))
        verdicts = explainer.trust.apply({"logits": result.logits, **result.extra})
        for i, (view, (image_path, out)) in enumerate(zip(views, outs, strict=True)):
            best = top_k(verdicts.probabilities[i], explainer.labels, args.top_k)
            top = ", ".join(f"{p.label} {100 * p.score:.1f}%" for p in best)
            score = verdicts.ood_score(i)
            if score is not None:
                verdict = "not one of the known classes" if verdicts.unknown[i] else "known"
                top += f"; OOD score {score:.3g} ({verdict})"
            lines = [f"{image_path.name}: {top}", explainer.describe, explainer.head_note]
            heads = result.heads[i] if result.heads is not None else None
            labels = [f"head {h}" for h in range(len(heads))] if heads is not None else None
            figure = explanation_figure(view, result.maps[i], lines, heads, labels, args.alpha, args.size)
            write_atomic(out, png_bytes(figure))
            print(f"{image_path} -> {out}  ({top})")
    return 1 if failed else 0
