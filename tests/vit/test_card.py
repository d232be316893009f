"""vit/card.py: the model card names its facts; export writes it beside the ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from serve.metadata import Calibration, ModelMetadata, OodSpec
from serve.preprocess import Preprocessing
from vit.card import card_facts, card_path, render_card, write_card


def metadata() -> ModelMetadata:
    metrics = {"n": 20, "before": {"top1": 0.9, "ece": 0.12, "nll": 0.5, "brier": 0.2}}
    metrics["after"] = {"top1": 0.9, "ece": 0.02, "nll": 0.3, "brier": 0.15}
    return ModelMetadata(
        labels=["cat", "dog"],
        preprocessing=Preprocessing(input_size=(32, 32)),
        model_name="vit_tiny_patch16_224",
        model_config={"depth": 2},
        calibration=Calibration(1.8, "val split of data (20 images)", metrics),
        ood=OodSpec("mahalanobis", 123.0, 0.95, "ood_score", "val split of data (20 images)"),
    )


def test_card_names_the_metrics_and_the_threshold(tmp_path: Path) -> None:
    info = {"training": {"class_counts": {"cat": 40, "dog": 35}, "epochs": 7, "budget_seconds": 300}}
    facts = card_facts(metadata(), info, extra={"per_class_accuracy": {"cat": 0.95, "dog": 0.85}})
    json.dumps(facts)  # the same facts go into the metadata as JSON
    text = write_card(card_path(tmp_path / "model.onnx"), facts).read_text()
    assert (tmp_path / "model.card.md").is_file()
    assert text.startswith("---\nlibrary_name: onnx")
    for section in (
        "## Model details",
        "## Classes and training data",
        "## Training procedure",
        "## Evaluation",
        "## Out-of-distribution flag",
        "## Preprocessing",
        "## Limits",
    ):
        assert section in text
    assert "| cat | 40 |" in text and "| dog | 35 |" in text
    assert "ECE (15 bins) | 12.00% | 2.00%" in text and "top-1 | 90.00% | 90.00%" in text
    assert "| dog | 85.00% |" in text
    assert "Threshold: 123" in text and "95.00% of the validation images are accepted" in text
    assert "budget seconds: 300" in text


def test_card_without_calibration_says_so() -> None:
    plain = ModelMetadata(["a"], Preprocessing(input_size=(8, 8)), "m")
    text = render_card(card_facts(plain, {}, {"a": 3}))
    assert "No validation metrics" in text and "no OOD flag" in text and "| a | 3 |" in text


def test_export_writes_the_card_and_the_facts(tiny_export) -> None:
    card = card_path(tiny_export.output)
    text = card.read_text()
    assert "## Export check" in text and "int8 delta" in text and "model.int8.onnx" in text
    props = {p.key: p.value for p in onnx.load(str(tiny_export.output)).metadata_props}
    facts = json.loads(props["vit.card"])
    assert facts["classes"] == tiny_export.metadata.labels
    assert sum(facts["training"]["class_counts"].values()) > 0
    meta = ModelMetadata.from_props(props)
    assert meta.calibration is not None and meta.calibration.temperature > 0
    assert meta.ood is not None and meta.ood.method == "mahalanobis" and meta.ood.accept_rate == 0.95
