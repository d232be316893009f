"""A Triton Inference Server model repository around an exported ONNX file.

Layout (Triton's onnxruntime backend)::

    DIR/<name>/config.pbtxt
    DIR/<name>/labels.txt
    DIR/<name>/1/model.onnx
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import onnx

from serve.metadata import ModelMetadata
from vit.atomic import atomic_file, write_atomic

TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64",
}
LABELS_FILE = "labels.txt"


def model_name(stem: str) -> str:
    """Triton model names become folder names and URL parts: keep them plain."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).strip(".") or "model"


def _tensor_entry(value: onnx.ValueInfoProto, label_file: str | None = None) -> str:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]  # no batch
    lines = [
        f'    name: "{value.name}"',
        f"    data_type: {TRITON_TYPES[tensor.elem_type]}",
        f"    dims: [ {', '.join(str(d) for d in dims)} ]",
    ]
    if label_file:
        lines.append(f'    label_filename: "{label_file}"')
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(
    model: onnx.ModelProto,
    name: str,
    *,
    max_batch_size: int = 32,
    max_queue_delay_us: int = 100,
    instance_count: int = 1,
) -> str:
    """ModelConfig text proto from the file's own inputs/outputs (the logits carry the labels)."""
    # Text written directly: Triton's ModelConfig proto classes come only with tritonclient[grpc].
    metadata = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    logits_name = metadata.outputs.get("logits") or "logits"
    inputs = [_tensor_entry(v) for v in model.graph.input]
    outputs = [_tensor_entry(v, LABELS_FILE if v.name == logits_name else None) for v in model.graph.output]
    return "\n".join(
        [
            f'name: "{name}"',
            'platform: "onnxruntime_onnx"',
            f"max_batch_size: {max_batch_size}",
            "input [\n" + ",\n".join(inputs) + "\n]",
            "output [\n" + ",\n".join(outputs) + "\n]",
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {max_queue_delay_us}",
            "}",
            "instance_group [\n  {\n    count: " + str(instance_count) + "\n    kind: KIND_AUTO\n  }\n]",
            "",
        ]
    )


def write_triton_repository(
    root: Path, model_path: Path, name: str | None = None, *, max_batch_size: int = 32
) -> Path:
    """Copy ``model_path`` into ``root/<name>/1/model.onnx`` with its config and labels; returns the folder."""
    model = onnx.load(str(model_path))
    metadata = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    name = model_name(name or Path(model_path).name.split(".")[0])
    folder = Path(root).expanduser() / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    # copy beside the target, then rename: Triton polling the repository never sees half a file
    with atomic_file(folder / "1" / "model.onnx") as tmp:
        shutil.copyfile(model_path, tmp)
        shutil.copymode(model_path, tmp)
    write_atomic(folder / LABELS_FILE, ("\n".join(metadata.labels) + "\n").encode())
    config = config_pbtxt(model, name, max_batch_size=max_batch_size)
    write_atomic(folder / "config.pbtxt", config.encode())
    return folder
