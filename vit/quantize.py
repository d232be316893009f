"""Reduced-precision copies of an exported fp32 ONNX file, made with onnxruntime's own tools."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx

# Dynamic quantization defaults; `scripts/bench_infer.py --int8-variants` measures the
# alternatives (per-channel, reduce_range, uint8 weights, Conv too) for speed and CIFAR-10
# accuracy, see docs/BENCHMARKS.md. `quant_pre_process` (shape inference + graph optimisation)
# runs first, as onnxruntime recommends.
INT8_DEFAULTS: dict[str, Any] = {
    "op_types": ["MatMul", "Gemm"],
    "weight_type": "QInt8",
    "per_channel": False,
    "reduce_range": False,
}


def quantize_int8(fp32_path: Path, **overrides: Any) -> onnx.ModelProto:
    """onnxruntime dynamic quantization: int8 weights, activations quantized per batch at run time.

    ``overrides`` replace :data:`INT8_DEFAULTS` (``op_types``, ``weight_type`` ``QInt8``/``QUInt8``,
    ``per_channel``, ``reduce_range``).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    unknown = set(overrides) - set(INT8_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown int8 option(s): {', '.join(sorted(unknown))}")
    options = {**INT8_DEFAULTS, **overrides}
    with tempfile.TemporaryDirectory(prefix="vit-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "quantized.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_dynamic(
            prepared,
            quantized,
            op_types_to_quantize=list(options["op_types"]),
            weight_type=QuantType[options["weight_type"]],
            per_channel=options["per_channel"],
            reduce_range=options["reduce_range"],
        )
        return onnx.load(str(quantized))


def convert_fp16(fp32_path: Path) -> onnx.ModelProto:
    """fp16 weights and compute for GPU providers; inputs and outputs stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = OnnxModel(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True))
    half.topological_sort()  # the converter appends the input casts after their consumers
    return half.model
