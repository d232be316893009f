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
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import onnx
import torch

from serve.metadata import ModelMetadata
from serve.preprocess import Preprocessing
from vit.arguments import parse_or_exit_code
from vit.atomic import atomic_file
from vit.classifier import open_session
from vit.export_plan import Plan, plan_export, weights_sha256
from vit.onnxfile import install_checked, stamp, to_onnx, variant_path
from vit.quantize import CALIBRATION_METHODS, INT8_METHODS
from vit.recommend import accuracy_drop, fastest, time_files
from vit.verify import Checker, ExportReport, FileReport, accuracy

__all__ = ["export_model", "export_net", "main", "weights_sha256"]

DEFAULT_OPSET = 20
# onnxruntime's transformer fusions (vit/optimize.py) measured no faster on CPU, fp32 or int8
# (docs/EXPORT.md): opt-in with --fuse.
DEFAULT_OPTIMIZE = False
DEFAULT_CALIBRATION = "minmax"  # static int8 calibration, chosen by measurement: docs/EXPORT.md


def fp32_graphs(plan: Plan, opset: int, optimize: bool) -> Iterator[tuple[onnx.ModelProto, list[str]]]:
    """Step 2: the fp32 graphs to try, best first, with the optimisations each carries."""
    size = plan.metadata.preprocessing.input_size
    if optimize and not plan.metadata.has_attention:  # the fused op has no probabilities output
        from vit.optimize import SPLIT_QKV, fusable, fuse, geometry

        rewritten, count = fusable(plan.module)
        shape = geometry(plan.net)
        if shape is not None:
            fused, applied = fuse(to_onnx(rewritten, size, plan.names, opset), *shape)
            if applied:
                yield fused, ([f"{SPLIT_QKV}x{count}"] if count else []) + applied
    yield to_onnx(plan.module, size, plan.names, opset), []


def write_fp32(
    plan: Plan, report: ExportReport, checker: Checker, opset: int, optimize: bool, log: Callable[[str], None]
) -> ModelMetadata:
    """Steps 2-4 for the fp32 file: export, optimise, check against PyTorch, install (into
    ``report.files``); a fused graph that fails the check gives way to the plain one."""
    for model, applied in fp32_graphs(plan, opset, optimize):
        metadata = dataclasses.replace(plan.metadata, optimizations=applied)
        method = "fused" if applied else "plain"
        checked = install_checked(stamp(model, metadata), report.output, partial(checker.fp32, method=method))
        if checked.ok or not applied:
            report.files.append(checked)
            report.metadata = metadata
            return metadata
        note = (
            f"the fused graph failed the check (max|dlogit| {checked.comparison.max_abs_diff:.2e}, "
            f"top-1 agreement {100 * checked.comparison.top1_agreement:.2f}%): falling back to the unfused graph"
        )
        report.notes.append(note)
        log(note)
    raise AssertionError("fp32_graphs yields the plain graph last")


def int8_candidates(plan: Plan, method: str) -> list[str]:
    """The int8 methods to try: static needs real check images to calibrate on."""
    methods = list(INT8_METHODS) if method == "auto" else [method]
    if "static" in methods and plan.inputs.generated:
        if method == "static":
            raise ValueError("--int8-method static calibrates on --check-data images: give --check-data")
        methods.remove("static")
    return methods


def write_int8(
    plan: Plan,
    fp32: FileReport,
    metadata: ModelMetadata,
    checker: Checker,
    report: ExportReport,
    method: str,
    calibration: str,
    log: Callable[[str], None],
) -> None:
    """Step 5: each int8 method staged and checked, all timed with the fp32 file; the fastest within
    the accuracy budget is installed as OUT.int8.onnx, the others reported as not kept."""
    from vit import quantize

    target = variant_path(fp32.path, "int8")
    staged: list[tuple[Path, FileReport]] = []
    with contextlib.ExitStack() as stack:
        for name in int8_candidates(plan, method):
            label = f"int8 {name}" + (f" {calibration}" if name == "static" else "")
            log(f"writing the {label} model ...")
            if name == "static":
                model = quantize.quantize_static_int8(fp32.path, plan.inputs.images, calibration=calibration)
            else:
                model = quantize.quantize_dynamic_int8(fp32.path)
            steps = [*metadata.optimizations, label.replace(" ", "-")]
            stamped = stamp(model, dataclasses.replace(metadata, precision="int8", optimizations=steps))
            tmp = stack.enter_context(atomic_file(target))
            data = stamped.SerializeToString()
            tmp.write_bytes(data)
            checked = checker.reduced(open_session(tmp, device="cpu"), target, len(data), "int8", label)
            staged.append((tmp, checked))
        speeds = time_files([fp32.path, *(tmp for tmp, _ in staged)], plan.inputs.images)
        fp32.images_per_second = speeds[fp32.path]
        for tmp, checked in staged:
            checked.images_per_second = speeds[tmp]
        reports = [checked for _, checked in staged]
        kept = fastest(reports, fp32) or min(reports, key=lambda r: accuracy_drop(r, fp32)[0])
        for tmp, checked in staged:
            if checked is not kept:
                tmp.unlink()  # atomic_file installs only the file that is still there
                report.discarded.append(checked)
        report.files.append(kept)


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
    int8_method: str = "auto",
    calibration: str = DEFAULT_CALIBRATION,
    fp16: bool = False,
    triton: str | Path | None = None,
    triton_name: str | None = None,
    with_attention: bool = False,
    optimize: bool = DEFAULT_OPTIMIZE,
    opset: int = DEFAULT_OPSET,
    ood_accept: float = 0.95,
    checkpoint_info: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> ExportReport:
    """Export an eval-mode network with its metadata, verify it, and write the extra formats.

    Steps: plan (metadata, extras, check inputs) -> fp32 (export, optimise, check, install) ->
    int8 (quantize, check, time, install the best) -> fp16 -> Triton -> model card.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"--quantize: unknown mode {quantize!r} (supported: int8)")
    if int8_method not in ("auto", *INT8_METHODS):
        raise ValueError(f"--int8-method: {int8_method!r} is not one of auto, {', '.join(INT8_METHODS)}")
    output = Path(output).expanduser()
    net = net.eval().float().cpu()
    plan = plan_export(
        net,
        labels=labels,
        preprocessing=preprocessing,
        model_name=model_name,
        model_config=model_config,
        check_data=check_data,
        check_limit=check_limit,
        with_attention=with_attention,
        ood_accept=ood_accept,
        checkpoint_info=checkpoint_info,
        log=log,
    )
    report = ExportReport(
        output, plan.metadata, plan.inputs, accuracy(plan.reference[0], plan.inputs.targets)
    )
    checker = Checker(plan.inputs, plan.reference, report.tolerance)
    log(f"exporting {model_name} to {output} (opset {opset}) ...")
    metadata = write_fp32(plan, report, checker, opset, optimize, log)
    if not report.ok:
        return report
    fp32 = report.files[0]
    if quantize == "int8":
        write_int8(plan, fp32, metadata, checker, report, int8_method, calibration, log)
    if fp16:
        from vit.quantize import convert_fp16

        log("writing the fp16 model ...")
        half = stamp(convert_fp16(output), dataclasses.replace(metadata, precision="fp16"))
        check = partial(checker.reduced, precision="fp16", method="fp16")
        report.files.append(install_checked(half, variant_path(output, "fp16"), check))
    if triton is not None:
        from vit.triton import write_triton_repository

        report.triton = write_triton_repository(Path(triton), output, triton_name)
    from vit.card import card_path, write_card

    log(f"model card: {write_card(card_path(output), plan.facts, report)}")
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
        checkpoint_info=loaded.info,
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
        "--quantize",
        choices=["int8"],
        help="also write OUTPUT.int8.onnx: the fastest int8 method within 0.5 pt of fp32 accuracy",
    )
    parser.add_argument(
        "--int8-method",
        choices=["auto", *INT8_METHODS],
        default="auto",
        help="auto: try dynamic and static (static needs --check-data), keep the best (default)",
    )
    parser.add_argument(
        "--calibration",
        choices=CALIBRATION_METHODS,
        default=DEFAULT_CALIBRATION,
        help=f"static int8: how activation ranges are set from the check images ({DEFAULT_CALIBRATION})",
    )
    parser.add_argument("--fp16", action="store_true", help="also write OUTPUT.fp16.onnx for GPU providers")
    parser.add_argument("--triton", type=Path, metavar="DIR", help="also write a Triton model repository")
    parser.add_argument("--triton-name", help="model name in the Triton repository (default: output stem)")
    parser.add_argument("--with-attention", action="store_true", help="second output: attention rollout")
    parser.add_argument(
        "--fuse",
        dest="optimize",
        action="store_true",
        default=DEFAULT_OPTIMIZE,
        help="fuse attention, LayerNorm and GELU into onnxruntime contrib ops (CPU and CUDA providers)",
    )
    parser.add_argument(
        "--ood-accept",
        type=float,
        default=0.95,
        help="with --check-data: OOD threshold accepting this share of validation images (0.95)",
    )
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
            int8_method=args.int8_method,
            calibration=args.calibration,
            fp16=args.fp16,
            triton=args.triton,
            triton_name=args.triton_name,
            with_attention=args.with_attention,
            optimize=args.optimize,
            opset=args.opset,
            ood_accept=args.ood_accept,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"vit export: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1
