"""``vit export``: a checkpoint -> one self-describing ONNX file, verified against PyTorch.

The file carries everything needed to use it (labels, preprocessing, model, versions, weights
hash; schema in :mod:`serve.metadata`, documented in docs/EXPORT.md) and nothing beside it.
Every file is staged under a temporary name, checked with onnxruntime, then renamed into place,
so an interrupted or failed export never leaves a half-written or unchecked file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import platform
import sys
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from serve.metadata import ModelMetadata
from serve.preprocess import Preprocessing
from vit.arguments import parse_or_exit_code
from vit.atomic import atomic_file
from vit.classifier import open_session
from vit.verify import (
    ExportReport,
    FileReport,
    accuracy,
    compare,
    generated_inputs,
    load_check_inputs,
    run_onnx,
    run_torch,
)

DEFAULT_OPSET = 20
INPUT_NAME = "images"


def weights_sha256(net: torch.nn.Module) -> str:
    """SHA-256 of the state dict tensors' bytes in sorted key order: the model's version."""
    digest = hashlib.sha256()
    state = net.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous().reshape(-1)
        digest.update(memoryview(tensor.view(torch.uint8).numpy()))
    return digest.hexdigest()


def framework_versions() -> dict[str, str]:
    import onnxruntime
    import PIL
    import timm

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        versions["vit"] = importlib.metadata.version("vit")
    return versions


def to_onnx(
    module: torch.nn.Module, input_size: tuple[int, int], outputs: list[str], opset: int
) -> onnx.ModelProto:
    """torch.onnx (dynamo) export with a dynamic batch axis, traced at batch 2 so it stays symbolic."""
    example = torch.randn(2, 3, *input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            verbose=False,
        )
    return program.model_proto


def stamp(model: onnx.ModelProto, metadata: ModelMetadata) -> onnx.ModelProto:
    """Set the ``vit.*`` metadata_props (others kept) and check the file is self-contained."""
    props = {p.key: p.value for p in model.metadata_props if not p.key.startswith("vit.")}
    onnx.helper.set_model_props(model, {**props, **metadata.to_props()})
    model.doc_string = "vit image classifier; metadata_props vit.* describe labels and preprocessing"
    if any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        raise ValueError("the exported model refers to external weight files; it must be one file")
    onnx.checker.check_model(model)
    return model


def install_checked(
    model: onnx.ModelProto, target: Path, check: Callable[[Any, Path, int], FileReport]
) -> FileReport:
    """Write ``model`` beside ``target``, check it from disk, rename it into place only if it passes."""
    data = model.SerializeToString()
    with atomic_file(target) as tmp:
        tmp.write_bytes(data)
        report = check(open_session(tmp, device="cpu"), target, len(data))
        if not report.ok:
            tmp.unlink()  # a model that fails its check never replaces the file
    return report


def export_net(
    net: torch.nn.Module,
    output: str | Path,
    *,
    labels: list[str],
    preprocessing: Preprocessing,
    model_name: str,
    model_config: dict[str, Any] | None = None,
    check_data: str | Path | None = None,
    check_limit: int = 256,
    quantize: str | None = None,
    fp16: bool = False,
    triton: str | Path | None = None,
    triton_name: str | None = None,
    with_attention: bool = False,
    opset: int = DEFAULT_OPSET,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> ExportReport:
    """Export an eval-mode network with its metadata, verify it, and write the extra formats."""
    if quantize not in (None, "int8"):
        raise ValueError(f"--quantize: unknown mode {quantize!r} (supported: int8)")
    output = Path(output).expanduser()
    net = net.eval().float().cpu()
    module, names = net, ["logits"]
    if with_attention:
        from vit.attention import WithAttention

        module, names = WithAttention(net).eval(), ["logits", "attention"]
    metadata = ModelMetadata(
        labels=list(labels),
        preprocessing=preprocessing,
        model_name=model_name,
        model_config=dict(model_config or {}),
        weights_sha256=weights_sha256(net),
        versions=framework_versions(),
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        outputs={"logits": "logits", "attention": "attention" if with_attention else None},
    )
    if check_data is not None:
        inputs = load_check_inputs(Path(check_data), metadata.labels, preprocessing, check_limit)
    else:
        inputs = generated_inputs(preprocessing)
    log(f"exporting {model_name} to {output} (opset {opset}) ...")
    model = stamp(to_onnx(module, preprocessing.input_size, names, opset), metadata)
    if with_attention:  # reference rollout from the hooks route, independent of the wrapper
        from vit.attention import rollout_torch

        reference = run_torch(lambda x: (net(x), rollout_torch(net, x)), inputs.images)
    else:
        reference = run_torch(net, inputs.images)
    report = ExportReport(output, metadata, inputs, accuracy(reference[0], inputs.targets))
    fp32_outputs: list[np.ndarray] = []

    def checker(precision: str, against: list[np.ndarray], strict: bool) -> Callable[..., FileReport]:
        def check(session: Any, target: Path, size: int) -> FileReport:
            outputs = run_onnx(session, inputs.images)
            if precision == "fp32":
                fp32_outputs[:] = outputs
            attention = float(np.abs(against[1] - outputs[1]).max()) if len(against) > 1 else None
            result = FileReport(
                precision,
                target,
                size,
                "torch" if precision == "fp32" else "fp32 onnx",
                compare(against[0], outputs[0], inputs.targets),
                attention,
            )
            if strict:
                worst = max(result.comparison.max_abs_diff, attention or 0.0)
                result.ok = worst <= report.tolerance and result.comparison.top1_agreement == 1.0
            return result

        return check

    report.files.append(install_checked(model, output, checker("fp32", reference, strict=True)))
    if not report.ok:
        return report
    from vit import quantize as reduced

    variants = [("int8", reduced.quantize_int8)] if quantize == "int8" else []
    if fp16:
        variants.append(("fp16", reduced.convert_fp16))
    for precision, convert in variants:
        log(f"writing the {precision} model ...")
        target = output.with_name(f"{output.name.removesuffix('.onnx')}.{precision}.onnx")
        variant = stamp(convert(output), dataclasses.replace(metadata, precision=precision))
        report.files.append(install_checked(variant, target, checker(precision, fp32_outputs, strict=False)))
    if triton is not None:
        from vit.triton import write_triton_repository

        report.triton = write_triton_repository(Path(triton), output, triton_name)
    return report


def export_model(checkpoint: str | Path, output: str | Path, **options: Any) -> ExportReport:
    """:func:`export_net` for a ``vit fit`` checkpoint (its EMA weights when trained with EMA)."""
    from vit.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    return export_net(
        loaded.net,
        output,
        labels=loaded.labels,
        preprocessing=loaded.preprocessing,
        model_name=loaded.model_name,
        model_config=loaded.model_config,
        **options,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a `vit fit` checkpoint (.ckpt)")
    parser.add_argument("-o", "--output", type=Path, help="ONNX file to write (default: CHECKPOINT.onnx)")
    parser.add_argument(
        "--check-data", type=Path, help="image folder for the self-check (class folders: accuracy too)"
    )
    parser.add_argument("--check-limit", type=int, default=256, help="at most this many check images")
    parser.add_argument(
        "--quantize", choices=["int8"], help="also write OUTPUT.int8.onnx (dynamic quantization)"
    )
    parser.add_argument("--fp16", action="store_true", help="also write OUTPUT.fp16.onnx for GPU providers")
    parser.add_argument("--triton", type=Path, metavar="DIR", help="also write a Triton model repository")
    parser.add_argument("--triton-name", help="model name in the Triton repository (default: output stem)")
    parser.add_argument("--with-attention", action="store_true", help="second output: attention rollout")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= 17, default {DEFAULT_OPSET})"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    if args.opset < 17:
        print("vit export: --opset must be >= 17", file=sys.stderr)
        return 2
    output = args.output or args.checkpoint.with_suffix(".onnx")
    try:
        report = export_model(
            args.checkpoint,
            output,
            check_data=args.check_data,
            check_limit=args.check_limit,
            quantize=args.quantize,
            fp16=args.fp16,
            triton=args.triton,
            triton_name=args.triton_name,
            with_attention=args.with_attention,
            opset=args.opset,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"vit export: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1
