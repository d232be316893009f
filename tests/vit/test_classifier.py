"""vit/classifier.py: a model from a path, ONNX or checkpoint, fed by its own preprocessing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx

from serve.metadata import ModelMetadata
from vit.classifier import load_classifier
from vit.predict import predict_paths


def test_onnx_and_checkpoint_agree(tiny_onnx: Path, tiny_checkpoint: Path, tiny_data: Path) -> None:
    paths = sorted(tiny_data.rglob("*.png"))[::4]
    onnx_rows, _ = predict_paths(load_classifier(tiny_onnx), paths, k=3)
    torch_rows, _ = predict_paths(load_classifier(tiny_checkpoint), paths, k=3)
    assert [r.labels for r in onnx_rows] == [r.labels for r in torch_rows]
    np.testing.assert_allclose([r.scores for r in onnx_rows], [r.scores for r in torch_rows], atol=1e-5)


def test_preprocessing_comes_from_the_file(tiny_onnx: Path, tiny_data: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    changed = dataclasses.replace(meta.preprocessing, crop_pct=0.5, mean=(0.0, 0.0, 0.0))
    meta.preprocessing = changed
    onnx.helper.set_model_props(model, meta.to_props())
    copy = tmp_path / "changed.onnx"
    onnx.save(model, str(copy))
    original, edited = load_classifier(tiny_onnx), load_classifier(copy)
    assert edited.preprocessing == changed and original.preprocessing != changed
    image = [tiny_data / "c0" / "000.png"]
    a, _ = predict_paths(original, image, k=3)
    b, _ = predict_paths(edited, image, k=3)
    assert not np.allclose(a[0].scores, b[0].scores, atol=1e-4)
