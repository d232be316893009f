"""Where the doctor's features come from: k-means, a checkpoint, weights by name, the cached default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.imagegen import write_class_folder
from vit import doctor_features
from vit.doctor import examine
from vit.doctor_features import KMeansFeatures, affordable, thumbnails


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


def test_the_budget_bounds_how_many_images_are_checked() -> None:
    assert affordable(10_000, 0.01, budget=60, fixed=10) == 5000
    assert affordable(100, 0.01, budget=60, fixed=10) == 100
    assert affordable(100, 0.01, budget=5, fixed=10) == 0


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
    from vit.doctor_features import feature_network

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
            from vit.doctor_features import feature_network

            feature_network(spec)
        assert main([str(root), "--model", spec, "-o", str(tmp_path / "r")]) == 2


def cache_tiny_vit(hub_cache: Path, repo: str = "someone/tiny-vit"):
    import timm

    from tests.hubcache import cached_repository

    source = timm.create_model("vit_tiny_patch16_224", num_classes=7, **HUB_CONFIG["model_args"])
    cached_repository(hub_cache, repo, source.state_dict(), HUB_CONFIG)
    return source


def test_auto_takes_the_default_features_once_they_are_cached(
    hub_cache: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor_features, "DEFAULT_FEATURES", "hf-hub:someone/tiny-vit")
    before = examine(tiny_data)  # auto, nothing cached: k-means, and a note saying what would do better
    assert any("k-means" in note and "hf download" in note for note in before.notes)
    assert not any("features of" in note for note in before.notes)
    cache_tiny_vit(hub_cache)
    after = examine(tiny_data)
    assert after.facts["model_input"] == 32
    assert any("features of hf-hub:someone/tiny-vit" in note for note in after.notes)
    chosen = examine(tiny_data, model="none")  # k-means on request, without the hint
    assert not any("hf download" in note or "features of" in note for note in chosen.notes)


def test_the_budget_covers_a_random_subset_with_its_own_features(hub_cache: Path, tiny_data: Path) -> None:
    cache_tiny_vit(hub_cache)
    paths = sorted(str(p) for p in tiny_data.rglob("*.png"))
    every, indices, side = doctor_features.model_features("hf-hub:someone/tiny-vit", paths)
    assert side == 32 and list(indices) == list(range(len(paths)))
    some, subset, _ = doctor_features.model_features("hf-hub:someone/tiny-vit", paths, budget=0.0)
    assert len(subset) == min(doctor_features.PROBE_IMAGES, len(paths)) < len(paths)
    assert list(subset) == sorted(subset)  # in folder order, each row the features of its image
    assert np.allclose(some, every[subset], atol=1e-5)


@pytest.mark.slow
def test_the_default_features_are_fed_at_their_feed_side(hub_cache: Path) -> None:
    import timm
    import torch
    from PIL import Image

    from tests.hubcache import cached_repository
    from vit.pretrained import hub_id

    name = doctor_features.DEFAULT_FEATURES
    assert not doctor_features.cached(name)
    native = timm.create_model(name.split(".")[0], num_classes=0)  # its pretrained side, 518 px
    cached_repository(hub_cache, hub_id(name), native.state_dict())
    assert doctor_features.cached(name) and doctor_features.resolve_features("auto") == (name, None)
    net, pre = doctor_features.feature_network(name)
    side = doctor_features.FEED_SIDES[name]
    assert side < 518 and pre.input_size == (side, side) and tuple(net.patch_embed.img_size) == (side, side)
    picture = pre(Image.new("RGB", (300, 200), "teal"))
    with torch.inference_mode():
        features = net.forward_head(net.forward_features(torch.from_numpy(picture[None])), pre_logits=True)
    assert features.shape == (1, native.num_features)
