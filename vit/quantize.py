"""Reduced-precision copies of an exported fp32 ONNX file, made with onnxruntime's own tools.

Two int8 methods, both after ``quant_pre_process`` (shape inference and graph optimisation, as
onnxruntime recommends):

- ``dynamic``: ``quantize_dynamic``, int8 weights, activation scales computed per batch at run time;
- ``static``: ``quantize_static`` in QDQ format, per-channel int8 weights and uint8 activations
  whose ranges are calibrated on the export's check images (what onnxruntime recommends for x86
  CPUs with VNNI). ``scripts/bench_infer.py --int8-variants`` measures the alternatives
  (calibration methods, operator sets) for speed and CIFAR-10 accuracy: docs/EXPORT.md.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

INT8_METHODS = ("dynamic", "static")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DYNAMIC_DEFAULTS: dict[str, Any] = {
    "op_types": ["MatMul", "Gemm"],
    "weight_type": "QInt8",
    "per_channel": False,
    "reduce_range": False,
}
STATIC_DEFAULTS: dict[str, Any] = {
    # Compute-heavy operators only: quantizing LayerNorm, Add, Mul and the data-movement nodes
    # between them too measured no faster and moved more logits (docs/EXPORT.md); it would also
    # reach into the OOD score's Mul/ReduceSum arithmetic (vit/trustfit.py).
    "op_types": ["Conv", "MatMul", "Gemm"],
    "calibration": "minmax",
    "per_channel": True,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
}
CALIBRATION_BATCH = 16


def _options(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"unknown int8 option(s): {', '.join(sorted(unknown))}")
    return {**defaults, **overrides}


def _prepared(fp32_path: Path, folder: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = folder / "prepared.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    return prepared


def quantize_dynamic_int8(fp32_path: Path, **overrides: Any) -> onnx.ModelProto:
    """onnxruntime dynamic quantization: int8 weights, activations quantized per batch at run time.

    ``overrides`` replace :data:`DYNAMIC_DEFAULTS` (``op_types``, ``weight_type`` ``QInt8``/``QUInt8``,
    ``per_channel``, ``reduce_range``).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = _options(DYNAMIC_DEFAULTS, overrides)
    with tempfile.TemporaryDirectory(prefix="vit-quantize-") as tmp:
        quantized = Path(tmp) / "quantized.onnx"
        quantize_dynamic(
            _prepared(fp32_path, Path(tmp)),
            quantized,
            op_types_to_quantize=list(options["op_types"]),
            weight_type=QuantType[options["weight_type"]],
            per_channel=options["per_channel"],
            reduce_range=options["reduce_range"],
        )
        return onnx.load(str(quantized))


class ImageReader:
    """onnxruntime's CalibrationDataReader protocol over preprocessed images, in batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = CALIBRATION_BATCH) -> None:
        self.input_name = input_name
        self.batches: Iterator[np.ndarray] = (images[i : i + batch] for i in range(0, len(images), batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_static_int8(fp32_path: Path, images: np.ndarray, **overrides: Any) -> onnx.ModelProto:
    """onnxruntime static QDQ quantization calibrated on ``images`` (float32 [N, 3, H, W]).

    ``overrides`` replace :data:`STATIC_DEFAULTS` (``op_types``, ``calibration``
    minmax/entropy/percentile, ``per_channel``, ``activation_type``, ``weight_type``).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    options = _options(STATIC_DEFAULTS, overrides)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if options["calibration"] not in methods:
        raise ValueError(f"calibration method {options['calibration']!r}: one of {', '.join(methods)}")
    if not len(images):
        raise ValueError("static int8 quantization needs calibration images")
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="vit-quantize-") as tmp:
        quantized = Path(tmp) / "quantized.onnx"
        quantize_static(
            _prepared(fp32_path, Path(tmp)),
            quantized,
            ImageReader(images, input_name),
            quant_format=QuantFormat.QDQ,
            # None: every operator type onnxruntime's QDQ quantizer handles
            op_types_to_quantize=None if options["op_types"] is None else list(options["op_types"]),
            per_channel=options["per_channel"],
            activation_type=QuantType[options["activation_type"]],
            weight_type=QuantType[options["weight_type"]],
            calibrate_method=methods[options["calibration"]],
        )
        return onnx.load(str(quantized))


def convert_fp16(fp32_path: Path) -> onnx.ModelProto:
    """fp16 weights and compute for GPU providers; inputs and outputs stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = OnnxModel(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True))
    half.topological_sort()  # the converter appends the input casts after their consumers
    return half.model
