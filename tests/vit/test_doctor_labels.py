"""The label and outlier checks: k-means features, out-of-sample probabilities, a checkpoint's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.imagegen import write_class_folder
from vit.doctor import examine
from vit.doctor_labels import KMeansFeatures, affordable, outlier_scores, thumbnails


def test_kmeans_features_separate_colour_coded_classes(tmp_path: Path) -> None:
    from vit.doctor_labels import out_of_sample_probabilities

    root = write_class_folder(tmp_path / "d", classes=3, per_class=20, size=(32, 32))
    paths = sorted(str(p) for p in root.rglob("*.png"))
    labels = np.array([int(Path(p).parent.name[1:]) for p in paths])
    images = thumbnails(paths)
    assert images.shape == (60, 32, 32, 3) and images.dtype == np.uint8
    features = KMeansFeatures(atoms=64).fit(images).transform(images)
    assert features.shape == (60, 4 * 64)
    probs = out_of_sample_probabilities(features, labels, folds=4)
    assert probs.shape == (60, 3) and np.allclose(probs.sum(axis=1), 1)
    assert (probs.argmax(axis=1) == labels).mean() > 0.9


def test_an_image_unlike_all_others_is_an_outlier() -> None:
    rng = np.random.default_rng(0)
    centres = 10 * rng.normal(size=(4, 16))
    features = centres[rng.integers(0, 4, 200)] + rng.normal(size=(200, 16))
    features[17] = 10 * rng.normal(size=16)  # a direction none of the classes has
    scores, fence = outlier_scores(features)
    assert scores[17] > fence and (scores > fence).sum() <= 3


def test_the_budget_bounds_how_many_images_are_checked() -> None:
    assert affordable(10_000, 0.01, budget=60, fixed=10) == 5000
    assert affordable(100, 0.01, budget=60, fixed=10) == 100
    assert affordable(100, 0.01, budget=5, fixed=10) == 0


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
