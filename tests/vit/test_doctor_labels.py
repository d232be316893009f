"""The label and outlier checks: out-of-sample probabilities, cleanlab's ranking, outliers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vit.doctor import examine
from vit.doctor_labels import outlier_scores


def test_an_image_unlike_all_others_is_an_outlier() -> None:
    rng = np.random.default_rng(0)
    centres = 10 * rng.normal(size=(4, 16))
    features = centres[rng.integers(0, 4, 200)] + rng.normal(size=(200, 16))
    features[17] = 10 * rng.normal(size=16)  # a direction none of the classes has
    scores, fence = outlier_scores(features)
    assert scores[17] > fence and (scores > fence).sum() <= 3


def test_too_few_images_per_class_skip_the_check_with_a_note(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for k, colour in enumerate(("red", "blue")):
        (root / f"c{k}").mkdir(parents=True)
        Image.new("RGB", (32, 32), colour).save(root / f"c{k}/0.png")
    report = examine(root)
    assert not [i for i in report.issues if i.kind == "label"]
    assert any("skipped" in note for note in report.notes)


@pytest.mark.slow
def test_a_checkpoint_gives_the_features(tiny_checkpoint: Path, tiny_data: Path) -> None:
    report = examine(tiny_data, model=str(tiny_checkpoint))
    assert report.facts["model_input"] == 32
    assert any("in-sample" in note for note in report.notes)
    assert all(i.given != i.suggested for i in report.issues if i.kind == "label")
