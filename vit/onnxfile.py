"""One ONNX file: torch.onnx export, the metadata stamp, and the checked, atomic install."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import torch

from serve.metadata import ModelMetadata
from vit.atomic import atomic_file
from vit.classifier import open_session
from vit.verify import FileReport

INPUT_NAME = "images"


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


def variant_path(output: Path, precision: str) -> Path:
    return output.with_name(f"{output.name.removesuffix('.onnx')}.{precision}.onnx")
