"""Defaults from a folder scan, and the CIFAR-10 recipe config: parses, builds, trains a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import vit.autoconfig as autoconfig
from tests.imagegen import write_class_folder
from vit.autoconfig import choose_batch_size, choose_img_size, choose_patch_size, scan, suggest_defaults
from vit.cli import main as vit_main
from vit.model import ViTClassifier

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "cifar10.yaml"


def test_scan_counts_and_median_sides(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "d", classes=3, per_class=10, size=(70, 50))
    stats = scan(root)
    assert (stats.classes, stats.short_side, stats.long_side) == (3, 50, 70)
    assert stats.train_images == 27  # 10 % of each class held out for validation


@pytest.mark.parametrize(
    ("short_side", "img_size", "patch"),
    [
        (20, 32, 4),
        (32, 32, 4),
        (40, 32, 4),
        (50, 48, 4),
        (64, 64, 8),
        (100, 96, 8),
        (150, 128, 16),
        (500, 224, 16),
    ],
)
def test_image_size_never_upscales_and_patch_keeps_tokens_moderate(
    short_side: int, img_size: int, patch: int
) -> None:
    assert choose_img_size(short_side) == img_size
    assert choose_patch_size(img_size) == patch
    tokens = (img_size // patch) ** 2
    assert 16 <= tokens <= 196


def test_batch_size_shrinks_for_tiny_data_sets() -> None:
    assert choose_batch_size(32, 50_000) == 128
    assert choose_batch_size(224, 50_000) == 64
    assert choose_batch_size(32, 2_000) == 128
    assert choose_batch_size(32, 300) == 32  # at least 8 steps per epoch
    assert choose_batch_size(32, 10) == 8


def test_regularisation_falls_as_the_folder_grows() -> None:
    from vit.autoconfig import choose_regularisation

    rows = [choose_regularisation(n) for n in (500, 2_000, 20_000, 50_000)]
    scales = [row["data.scale"][0] for row in rows]
    drops = [row["model.drop_path_rate"] for row in rows]
    assert scales == sorted(scales) and scales[0] < scales[-1] == 1.0  # lighter crops for more images
    assert drops == sorted(drops, reverse=True) and drops[-1] == 0.0


def test_grey_folders_are_not_mirrored(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "grey"
    for k in range(2):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(6):
            Image.new("L", (28, 28), 40 * k + i).save(root / f"c{k}" / f"{i}.png")
    assert scan(root).grey and suggest_defaults(root, gpu=False)["data.hflip"] == 0.0
    colour = write_class_folder(tmp_path / "colour", classes=2, per_class=6, size=(28, 28))
    assert not scan(colour).grey and suggest_defaults(colour, gpu=False)["data.hflip"] == 0.5


def test_suggestions_for_small_images_build_a_working_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(autoconfig, "cpu_has_bf16", lambda: False)
    root = write_class_folder(tmp_path / "d", classes=3, per_class=12, size=(36, 36))
    suggested = suggest_defaults(root, gpu=False)
    assert suggested["model.img_size"] == 32 and suggested["model.patch_size"] == 4
    assert suggested["model.model_name"] == autoconfig.SMALL_IMAGE_MODEL
    assert suggested["data.cache"] is True
    if not torch.cuda.is_available():
        assert suggested["trainer.precision"] == "32-true"  # bf16 is emulated on such CPUs
    model_args = {k.removeprefix("model."): v for k, v in suggested.items() if k.startswith("model.")}
    net = ViTClassifier(num_classes=3, **model_args).net
    assert net.patch_embed.grid_size == (8, 8)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_suggestions_for_photos(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "d", classes=2, per_class=6, size=(400, 300))
    suggested = suggest_defaults(root, gpu=False)
    assert suggested["model.img_size"] == 224 and suggested["model.patch_size"] == 16
    assert suggested["model.model_name"] == "vit_tiny_patch16_224"
    assert suggested["data.cache"] == "auto" and suggested["data.eval_crop_pct"] == 0.875
    assert suggested["data.cache_size"] == 256  # 224 / 0.875, below the 300 px shorter side: no second probe


def test_recipe_config_parses_and_trains_a_few_steps(tmp_path: Path) -> None:
    recipe = yaml.safe_load(RECIPE.read_text())
    assert recipe["budget"] and recipe["data"]["cache"] is True
    data = write_class_folder(tmp_path / "data", classes=3, per_class=12, size=(32, 32))
    run = tmp_path / "run"
    vit_main(["fit", "--config", str(RECIPE), "--data.root", str(data), "--trainer.default_root_dir", str(run),
              "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_steps", "3",
              "--trainer.enable_progress_bar", "false"])  # fmt: skip
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert checkpoint["vit"]["model"]["name"] == recipe["model"]["model_name"]


def test_hflip_auto_follows_the_colour_of_the_folder(tmp_path: Path) -> None:
    from PIL import Image

    from vit.data import ImageFolderDataModule

    grey = tmp_path / "grey"
    for k in range(2):
        (grey / f"c{k}").mkdir(parents=True)
        for i in range(6):
            Image.new("L", (28, 28), 40 * k + i).save(grey / f"c{k}" / f"{i}.png")
    colour = write_class_folder(tmp_path / "colour", classes=2, per_class=6, size=(28, 28))
    assert ImageFolderDataModule(str(grey), img_size=32, hflip="auto").hparams.hflip == 0.0
    assert ImageFolderDataModule(str(colour), img_size=32, hflip="auto").hparams.hflip == 0.5
    with pytest.raises(ValueError, match="data.hflip"):
        ImageFolderDataModule(str(colour), img_size=32, hflip="sometimes")
