"""serve/metadata.py: schema version 2 round trip, version-1 files, bad trust fields."""

from __future__ import annotations

import json

import pytest

from serve.metadata import SCHEMA_VERSION, Calibration, MetadataError, ModelMetadata, OodSpec
from serve.preprocess import Preprocessing


def full() -> ModelMetadata:
    return ModelMetadata(
        labels=["a", "b"],
        preprocessing=Preprocessing(input_size=(8, 8)),
        model_name="tiny",
        weights_sha256="0" * 64,
        outputs={"logits": "logits", "attention": None, "ood_score": "ood_score"},
        calibration=Calibration(1.7, "val split of x (10 images)", {"after": {"ece": 0.01}}),
        ood=OodSpec("mahalanobis", 42.0, 0.95, "ood_score", "val split of x", {"train_images": 20}),
        card={"classes": ["a", "b"]},
    )


def test_round_trip_with_trust_fields() -> None:
    props = full().to_props()
    assert props["vit.schema_version"] == str(SCHEMA_VERSION) == "2"
    back = ModelMetadata.from_props(props)
    assert back == full()


def test_version_1_file_still_loads() -> None:
    props = full().to_props()
    for key in ("vit.calibration", "vit.ood", "vit.card"):
        del props[key]
    props["vit.schema_version"] = "1"
    props["vit.outputs"] = json.dumps({"logits": "logits", "attention": None})
    meta = ModelMetadata.from_props(props)
    assert meta.calibration is None and meta.ood is None and meta.card is None


def test_unknown_extra_keys_are_kept_out_and_ignored() -> None:
    props = {**full().to_props(), "vit.optimizations": "[]", "other.key": "x"}
    assert ModelMetadata.from_props(props).labels == ["a", "b"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("vit.calibration", {"temperature": 0}, "temperature must be > 0"),
        ("vit.calibration", {"temperature": "hot"}, "finite number"),
        ("vit.ood", {"method": "vibes", "threshold": 1}, "ood.method"),
        ("vit.ood", {"method": "mahalanobis", "threshold": 1}, "ood.output"),
        ("vit.ood", {"method": "msp"}, "ood.threshold"),
    ],
)
def test_bad_trust_fields_name_the_key(key: str, value: dict, message: str) -> None:
    props = {**full().to_props(), key: json.dumps(value)}
    with pytest.raises(MetadataError, match=message):
        ModelMetadata.from_props(props)
