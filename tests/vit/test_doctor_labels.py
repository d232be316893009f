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


HUB_CONFIG = {
    "architecture": "vit_tiny_patch16_224",
    "num_classes": 7,
    "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
                       "interpolation": "bilinear", "crop_pct": 1.0, "classifier": "head"},
}  # fmt: skip


def test_pretrained_weights_by_name_give_the_features(hub_cache: Path, tiny_data: Path) -> None:
    import timm
    import torch

    from tests.hubcache import cached_repository
    from vit.doctor_labels import feature_network

    source = timm.create_model("vit_tiny_patch16_224", num_classes=7, **HUB_CONFIG["model_args"])
    cached_repository(hub_cache, "someone/tiny-vit", source.state_dict(), HUB_CONFIG)
    net, pre = feature_network("hf-hub:someone/tiny-vit")
    assert torch.equal(net.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert net.num_classes == 0  # features, not the pretrained classes
    assert pre.input_size == (32, 32) and pre.mean == (0.1, 0.2, 0.3) and pre.interpolation == "bilinear"
    report = examine(tiny_data, model="hf-hub:someone/tiny-vit")
    assert report.facts["model_input"] == 32
    assert any("features of hf-hub:someone/tiny-vit" in note for note in report.notes)


def test_a_model_that_is_neither_a_checkpoint_nor_cached_is_a_clear_error(
    hub_cache: Path, tmp_path: Path
) -> None:
    from vit.doctor import main

    root = write_class_folder(tmp_path / "d", classes=2, per_class=4, size=(32, 32))
    for spec, words in (
        (str(tmp_path / "weights.pth"), "neither a vit checkpoint"),
        ("vit_tiny_patch16_224.augreg_in21k", "not in the Hugging Face cache"),
    ):
        with pytest.raises(ValueError, match=words):
            from vit.doctor_labels import feature_network

            feature_network(spec)
        assert main([str(root), "--model", spec, "-o", str(tmp_path / "r")]) == 2
