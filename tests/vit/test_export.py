"""vit export: dynamic batch, metadata, self-check, int8/fp16, Triton repository, atomic writes."""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from serve.metadata import ModelMetadata
from vit import atomic as atomic_module
from vit import export as export_module
from vit.checkpoint import load_checkpoint
from vit.export import export_model, main, weights_sha256
from vit.verify import run_onnx

# -- a strict parser for the text-proto subset of Triton's ModelConfig ---------------------------
# Hand-written because Triton's generated model_config_pb2 ships in tritonclient[grpc], which pins
# protobuf<7 and ml-dtypes<=0.5.4 (onnx here runs on protobuf 7 and ml-dtypes 0.6).
# Field names from Triton's model_config.proto (message -> field -> kind); a field that is not in
# the schema, a value of the wrong kind or an unknown enum value is an error. Fields of the proto
# this exporter never writes map to None and are rejected as "not expected".
# fmt: off
DATA_TYPES = {
    "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16",
    "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
}
SCHEMA: dict[str, dict[str, object]] = {
    "ModelConfig": {
        "name": "string", "platform": "string", "backend": "string", "runtime": None,
        "version_policy": None, "max_batch_size": "int", "input": ["ModelInput"], "output": ["ModelOutput"],
        "batch_input": None, "batch_output": None, "optimization": None,
        "dynamic_batching": "ModelDynamicBatching", "sequence_batching": None, "ensemble_scheduling": None,
        "instance_group": ["ModelInstanceGroup"], "default_model_filename": "string",
        "cc_model_filenames": None, "metric_tags": None, "parameters": None, "model_warmup": None,
        "model_operations": None, "model_transaction_policy": None, "model_repository_agents": None,
        "response_cache": None, "model_metrics": None,
    },
    "ModelInput": {
        "name": "string", "data_type": DATA_TYPES, "format": {"FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"},
        "dims": ["int"], "reshape": None, "is_shape_tensor": "bool", "allow_ragged_batch": "bool",
        "optional": "bool", "is_non_linear_format_io": "bool",
    },
    "ModelOutput": {
        "name": "string", "data_type": DATA_TYPES, "dims": ["int"], "reshape": None,
        "label_filename": "string", "is_shape_tensor": "bool", "is_non_linear_format_io": "bool",
    },
    "ModelDynamicBatching": {
        "preferred_batch_size": ["int"], "max_queue_delay_microseconds": "int", "preserve_ordering": "bool",
        "priority_levels": "int", "default_priority_level": "int", "default_queue_policy": None,
        "priority_queue_policy": None,
    },
    "ModelInstanceGroup": {
        "name": "string", "kind": {"KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"}, "count": "int",
        "rate_limiter": None, "gpus": ["int"], "secondary_devices": None, "profile": ["string"],
        "passive": "bool", "host_policy": "string",
    },
}
# fmt: on
TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([A-Za-z_][A-Za-z0-9_]*)|(-?\d+)|([{}\[\]:,]))')


def tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        match = TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"unexpected text at {pos}: {text[pos : pos + 20]!r}")
        pos = match.end()
        if not match.group(1):
            tokens.append(match.group(0).strip())
    return tokens


def parse_message(tokens: list[str], message: str, end: str | None = None) -> dict:
    """Parse fields until ``end``; repeated fields become lists, scalars are type-checked."""
    fields: dict = {}
    while tokens and tokens[0] != end:
        name = tokens.pop(0)
        schema = SCHEMA[message]
        if name not in schema:
            raise ValueError(f"{message} has no field {name!r}")
        kind = schema[name]
        if kind is None:
            raise ValueError(f"{message}.{name} is not expected in this config")
        repeated = isinstance(kind, list)
        kind = kind[0] if repeated else kind
        if tokens[0] == ":":
            tokens.pop(0)
        values = []
        if tokens[0] == "[":
            tokens.pop(0)
            while tokens[0] != "]":
                values.append(parse_value(tokens, kind, f"{message}.{name}"))
                if tokens[0] == ",":
                    tokens.pop(0)
            tokens.pop(0)
        else:
            values.append(parse_value(tokens, kind, f"{message}.{name}"))
        if not repeated and (len(values) != 1 or name in fields):
            raise ValueError(f"{message}.{name} is not repeated")
        fields[name] = fields.get(name, []) + values if repeated else values[0]
    if end:
        tokens.pop(0)
    return fields


def parse_value(tokens: list[str], kind: object, where: str) -> object:
    token = tokens.pop(0)
    if isinstance(kind, str) and kind in SCHEMA:
        if token != "{":
            raise ValueError(f"{where}: expected a message")
        return parse_message(tokens, kind, end="}")
    if kind == "string" and token.startswith('"'):
        return token[1:-1]
    if kind == "int" and re.fullmatch(r"-?\d+", token):
        return int(token)
    if kind == "bool" and token in ("true", "false"):
        return token == "true"
    if isinstance(kind, set) and token in kind:
        return token
    raise ValueError(f"{where}: {token!r} is not a valid {kind}")


def parse_model_config(text: str) -> dict:
    return parse_message(tokenize(text), "ModelConfig")


# -- tests ------------------------------------------------------------------------------------
def torch_logits(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    net = load_checkpoint(checkpoint).net
    with torch.inference_mode():
        return net(torch.from_numpy(images)).numpy()


def test_single_file_with_dynamic_batch(tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone" / "copy.onnx"  # no other file beside it: weights must be inside
    alone.parent.mkdir()
    shutil.copyfile(tiny_onnx, alone)
    model = onnx.load(str(alone))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    session = ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    # logits first; an OOD score output follows when --check-data fitted one (docs/TRUST.md)
    assert [o.name for o in session.get_outputs()][:1] == ["logits"]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic batch axis
    rng = np.random.default_rng(1)
    for batch in (1, 3, 17):
        images = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
        (logits,) = session.run(["logits"], {"images": images})
        assert logits.shape == (batch, 3)
        np.testing.assert_allclose(logits, torch_logits(tiny_checkpoint, images), atol=1e-4, rtol=0)


def test_metadata_round_trip(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    loaded = load_checkpoint(tiny_checkpoint)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    assert meta.labels == loaded.labels == ["c0", "c1", "c2"]
    assert meta.preprocessing == loaded.preprocessing
    assert (meta.model_name, meta.model_config) == (loaded.model_name, loaded.model_config)
    assert meta.weights_sha256 == weights_sha256(loaded.net)
    assert {"torch", "timm", "onnx", "onnxruntime"} <= set(meta.versions)
    assert datetime.fromisoformat(meta.exported_at).tzinfo is not None
    assert meta.precision == "fp32" and not meta.has_attention
    # onnx's own reader sees the same props as onnxruntime's
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    assert ModelMetadata.from_props(props).to_props() == meta.to_props()


def test_weights_hash_follows_the_weights(tiny_checkpoint: Path) -> None:
    net = load_checkpoint(tiny_checkpoint).net
    before = weights_sha256(net)
    assert weights_sha256(load_checkpoint(tiny_checkpoint).net) == before
    with torch.no_grad():
        net.head.bias[0] += 1e-3
    assert weights_sha256(net) != before


def test_self_check_report(tiny_export) -> None:
    fp32 = tiny_export.files[0]
    assert tiny_export.ok and fp32.ok and fp32.reference == "torch"
    assert fp32.comparison.max_abs_diff <= 1e-4 and fp32.comparison.top1_agreement == 1.0
    assert tiny_export.inputs.targets is not None  # class folders named like the labels
    assert fp32.comparison.accuracy == tiny_export.torch_accuracy
    text = tiny_export.format()
    assert "check passed" in text and "model.int8.onnx" in text and "model.fp16.onnx" in text


def altered(model_path: Path) -> onnx.ModelProto:
    """The exported model with the classifier bias shifted: a wrong model that still runs."""
    model = onnx.load(str(model_path))
    bias = next(t for t in model.graph.initializer if t.name.endswith("head.bias"))
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] += 0.5
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    return model


def test_altered_model_fails_the_check(tiny_onnx, tiny_checkpoint, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(export_module, "to_onnx", lambda *args, **kwargs: altered(tiny_onnx))
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous good model")
    assert main([str(tiny_checkpoint), "-o", str(target)]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert target.read_bytes() == b"previous good model"  # a failed check never replaces a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_interrupted_export_leaves_no_partial_file(tiny_onnx, tiny_checkpoint, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "to_onnx", lambda *args, **kwargs: onnx.load(str(tiny_onnx)))

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_checkpoint, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_int8_and_fp16_files(tiny_export) -> None:
    fp32, int8, fp16 = tiny_export.files
    assert (int8.precision, fp16.precision) == ("int8", "fp16")
    assert int8.size_bytes < fp32.size_bytes and fp16.size_bytes < fp32.size_bytes
    inputs = tiny_export.inputs
    reference = ort.InferenceSession(str(fp32.path), providers=["CPUExecutionProvider"])
    expected = run_onnx(reference, inputs.images)[0]
    for report in (int8, fp16):
        assert report.path.name == f"model.{report.precision}.onnx" and report.reference == "fp32 onnx"
        session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
        meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
        assert meta.precision == report.precision
        assert meta.weights_sha256 == tiny_export.metadata.weights_sha256
        assert session.get_inputs()[0].type == "tensor(float)"  # I/O stays float32
        # same batches as the self-check (int8 activation scales are per batch): same numbers
        logits = run_onnx(session, inputs.images)[0]
        assert logits.shape == expected.shape and np.isfinite(logits).all()
        assert report.comparison.top1_agreement == (logits.argmax(1) == expected.argmax(1)).mean()
        assert report.comparison.max_abs_diff == pytest.approx(float(np.abs(logits - expected).max()))
        assert report.comparison.accuracy == (logits.argmax(1) == inputs.targets).mean()


def test_triton_repository(tiny_export) -> None:
    folder = tiny_export.triton
    config = parse_model_config((folder / "config.pbtxt").read_text())
    assert config["name"] == folder.name and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] >= 1 and "max_queue_delay_microseconds" in config["dynamic_batching"]
    assert config["input"] == [{"name": "images", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}]
    logits = config["output"][0]
    assert (logits["name"], logits["dims"]) == ("logits", [3])
    labels = (folder / logits["label_filename"]).read_text().splitlines()
    assert labels == tiny_export.metadata.labels
    assert (folder / "1" / "model.onnx").read_bytes() == tiny_export.output.read_bytes()


@pytest.mark.parametrize(
    "text",
    [
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_sizes: 4',  # misspelt field
        'name: "m"\ninput [ { name: "x" data_type: TYPE_FLOAT32 dims: [ 3 ] } ]',  # bad enum
        'name: "m"\ndynamic_batching { max_queue_delay: 100 }',  # unknown nested field
        "max_batch_size: many",
    ],
)
def test_config_parser_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        parse_model_config(text)


def test_with_attention(tiny_attention_onnx: Path, tiny_checkpoint: Path) -> None:
    """The fixture's export passed the self-check (attention within 1e-4 of the rollout too)."""
    from vit.attention import rollout_torch

    session = ort.InferenceSession(str(tiny_attention_onnx), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()][:2] == ["logits", "attention"]
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    assert (meta.outputs["logits"], meta.outputs["attention"]) == ("logits", "attention")
    images = np.random.default_rng(2).normal(size=(3, 3, 32, 32)).astype(np.float32)
    logits, attention = session.run(["logits", "attention"], {"images": images})
    net = load_checkpoint(tiny_checkpoint).net
    assert attention.shape == (3, 4, 4)
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(attention, rollout_torch(net, torch.from_numpy(images)).numpy(), atol=1e-4)
    np.testing.assert_allclose(logits, torch_logits(tiny_checkpoint, images), atol=1e-4)


def test_cli_usage_errors(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.ckpt"), "--opset", "13"]) == 2
    assert main(["--quantize", "int4", "x.ckpt"]) == 2


# -- graph optimisation, int8 methods, the recommended file ------------------------------------
def served_label(path: Path, image: Path) -> tuple[str, str]:
    """(label `vit serve` answers for ``image``, label of the file's own top-1 on it)."""
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.preprocess import decode_image
    from serve.settings import Settings

    meta = ModelMetadata.from_props(onnx_props(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = meta.preprocessing(decode_image(image.read_bytes(), preprocessing=meta.preprocessing))
    expected = meta.labels[int(session.run(None, {"images": pixels[None]})[0].argmax())]
    settings = Settings(model=path, threads=1, preprocess_threads=1, access_log=False)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/classify", content=image.read_bytes(), headers={"content-type": "image/png"}
        )
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["label"], expected


def onnx_props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def fused_export(tiny_checkpoint: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """:func:`tiny_checkpoint` exported with ``--fuse`` (fp32 only), self-checked on :func:`tiny_data`."""
    out = tmp_path_factory.mktemp("fused") / "model.onnx"
    return export_model(tiny_checkpoint, out, check_data=tiny_data, optimize=True)


def test_plain_file_records_no_optimisation(tiny_export) -> None:
    fp32 = tiny_export.files[0]
    assert fp32.method == "plain" and ModelMetadata.from_props(onnx_props(fp32.path)).optimizations == []
    assert not {"Attention", "SkipLayerNormalization"} & op_types(fp32.path)  # standard ONNX ops only


def test_fused_file_names_its_optimisations_and_serves(fused_export, tiny_data: Path) -> None:
    fp32 = fused_export.files[0]
    meta = ModelMetadata.from_props(onnx_props(fp32.path))
    assert fp32.ok and fp32.method == "fused"
    assert any(o.startswith("fused:Attention") for o in meta.optimizations), meta.optimizations
    assert {"Attention", "SkipLayerNormalization"} <= op_types(fp32.path)  # onnxruntime contrib ops
    image = sorted(tiny_data.rglob("*.png"))[0]
    served, expected = served_label(fp32.path, image)
    assert served == expected


def test_auto_int8_keeps_one_method_and_reports_both(tiny_export) -> None:
    int8 = next(f for f in tiny_export.files if f.precision == "int8")
    (other,) = tiny_export.discarded
    assert {int8.method, other.method} == {"int8 dynamic", "int8 static minmax"}
    assert int8.images_per_second and other.images_per_second  # both timed beside the fp32 file
    assert not other.path.exists() or other.path == int8.path  # only the kept one is on disk
    meta = ModelMetadata.from_props(onnx_props(int8.path))
    assert meta.optimizations[-1] == int8.method.replace(" ", "-")
    text = tiny_export.format()
    assert "(not kept)" in text and other.method in text


def test_recommended_file_line(tiny_export) -> None:
    from vit.recommend import recommendation

    last = tiny_export.format().splitlines()[-1]
    chosen = recommendation(tiny_export).file
    assert chosen.precision in ("fp32", "int8") and chosen.path.is_file()
    assert last.startswith(f"deploy {chosen.path.name}: ") and f"vit serve {chosen.path}" in last


def test_static_int8_passes_and_serves(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "model.onnx"
    args = ["--check-data", str(tiny_data), "--quantize", "int8", "--int8-method", "static"]
    assert main([str(tiny_checkpoint), "-o", str(out), *args, "--calibration", "percentile"]) == 0
    printed = capsys.readouterr().out
    static = out.with_name("model.int8.onnx")
    assert "int8 static percentile" in printed and printed.splitlines()[-1].startswith("deploy model")
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(static)  # QDQ format
    meta = ModelMetadata.from_props(onnx_props(static))
    assert meta.precision == "int8" and meta.optimizations[-1] == "int8-static-percentile"
    served, expected = served_label(static, sorted(tiny_data.rglob("*.png"))[-1])
    assert served == expected


def test_static_int8_needs_check_data(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    args = ["-o", str(tmp_path / "m.onnx"), "--quantize", "int8", "--int8-method", "static"]
    assert main([str(tiny_checkpoint), *args]) == 2
    assert "--check-data" in capsys.readouterr().err


def qk_norm_net() -> torch.nn.Module:
    """A ViT whose attention normalises q and k: not the layout onnxruntime's fuser matches."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        num_classes=3, qk_norm=True,
    )  # fmt: skip
    with torch.no_grad():  # distinct values: timm's zero biases would share one ONNX initializer
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return net.eval()


def export_tiny(net: torch.nn.Module, out: Path, **options):
    from serve.preprocess import Preprocessing

    labels, pre = ["a", "b", "c"], Preprocessing(input_size=(32, 32))
    return export_module.export_net(
        net,
        out,
        labels=labels,
        preprocessing=pre,
        model_name="vit_tiny_patch16_224",
        optimize=True,
        **options,
    )


def test_attention_that_cannot_fuse_exports_unfused(tmp_path: Path) -> None:
    report = export_tiny(qk_norm_net(), tmp_path / "model.onnx")
    assert report.ok, report.format()
    meta = ModelMetadata.from_props(onnx_props(report.output))
    assert not any("Attention" in o or "split-qkv" in o for o in meta.optimizations)
    assert "Attention" not in op_types(report.output)  # every block's attention stays written out


def test_broken_fusion_falls_back_to_the_plain_graph(tmp_path: Path, monkeypatch) -> None:
    from vit import optimize

    real_fuse = optimize.fuse

    def broken(model, num_heads, hidden_size):
        fused, applied = real_fuse(model, num_heads, hidden_size)
        bias = next(t for t in fused.graph.initializer if t.name.endswith("head.bias"))
        values = onnx.numpy_helper.to_array(bias).copy() + 1.0  # a wrong but runnable graph
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        return fused, applied

    monkeypatch.setattr(optimize, "fuse", broken)
    logged: list[str] = []
    net = qk_norm_net()
    for block in net.blocks:  # plain attention this time, so the fused graph is really tried
        block.attn.q_norm = block.attn.k_norm = torch.nn.Identity()
    report = export_tiny(net, tmp_path / "model.onnx", log=logged.append)
    assert report.ok and report.files[0].method == "plain"
    assert ModelMetadata.from_props(onnx_props(report.output)).optimizations == []
    assert any("falling back to the unfused graph" in line for line in logged + report.notes)
