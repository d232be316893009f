"""The decoded cache gives the pixels, labels and skip report of the uncached path; stale entries are never read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vit.cache as cache_module
from serve.preprocess import Preprocessing, decode_image
from tests.imagegen import write_class_folder
from tests.vit.conftest import TINY_MODEL_ARGS
from vit.augment import BatchAugment
from vit.cache import CachedSplits, open_cache, square_preprocessing
from vit.data import ImageFolderDataModule
from vit.folder import discover, drop_bad_images, format_skip_report


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """train/ + test/ with PNGs, odd-sized JPEGs, a grayscale image and two unusable files."""
    root = tmp_path / "data"
    write_class_folder(root / "train", classes=3, per_class=10, size=(40, 36))
    write_class_folder(root / "test", classes=3, per_class=4, size=(30, 44), seed=1)
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(
        root / "train/c1/wide.jpg", quality=90
    )
    Image.fromarray(rng.integers(0, 255, (64, 20), dtype=np.uint8)).save(root / "train/c2/grey.png")
    (root / "train/c0/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (root / "test/c2/000.png").read_bytes()
    (root / "test/c2/truncated.png").write_bytes(good[: len(good) // 2])
    return root


def decoded(path: str, preprocessing: Preprocessing) -> np.ndarray:
    """The uncached route: shared decoder, then the same geometry."""
    return np.array(preprocessing.resize_and_crop(decode_image(path, preprocessing=preprocessing)))


def test_cache_holds_the_uncached_pixels_labels_and_skips(mixed_folder: Path, tmp_path: Path) -> None:
    splits = discover(mixed_folder, val_fraction=0.2, seed=0)
    eval_pre = Preprocessing(input_size=(32, 32), crop_pct=0.875)
    cached = open_cache(splits, eval_pre, True, tmp_path / "cache", side=36)
    uncached = drop_bad_images(splits)
    assert cached.splits.classes == uncached.classes
    for split in ("train", "val", "test"):
        assert getattr(cached.splits, split) == getattr(uncached, split)
    assert cached.splits.skipped == uncached.skipped
    assert format_skip_report(cached.splits.skipped) == format_skip_report(uncached.skipped)
    assert {Path(p).name for p, _ in cached.splits.skipped} == {"broken.jpg", "truncated.png"}
    train_pre = square_preprocessing(36, eval_pre.interpolation)
    for split, pre in (("train", train_pre), ("val", eval_pre), ("test", eval_pre)):
        dataset = cached.dataset(split)
        samples = getattr(uncached, split)
        images, labels = dataset[list(range(len(dataset)))]
        assert labels.tolist() == [label for _, label in samples]
        expected = np.stack([decoded(path, pre) for path, _ in samples])
        assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), expected)


def test_cached_eval_batches_equal_uncached_batches(mixed_folder: Path, tmp_path: Path) -> None:
    def batches(cache: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dm = ImageFolderDataModule(
            str(mixed_folder), img_size=32, batch_size=4, num_workers=0, cache=cache, cache_dir=str(tmp_path)
        )
        dm.setup("test")
        return [dm.on_after_batch_transfer(batch, 0) for batch in dm.test_dataloader()]

    cached, uncached = batches(True), batches(False)
    assert len(cached) == len(uncached) > 1
    for (x_c, y_c), (x_u, y_u) in zip(cached, uncached, strict=True):
        assert x_c.dtype == x_u.dtype == torch.float32
        assert torch.equal(y_c, y_u)
        assert torch.equal(x_c, x_u)


def test_same_crops_from_cache_and_fresh_decodes(mixed_folder: Path, tmp_path: Path) -> None:
    dm = ImageFolderDataModule(
        str(mixed_folder),
        img_size=24,
        batch_size=8,
        num_workers=0,
        cache=True,
        cache_dir=str(tmp_path),
        cache_size=30,
    )
    dm.setup("fit")
    loader_images, _ = next(iter(dm.train_dataloader()))
    assert loader_images.dtype == torch.uint8 and loader_images.shape == (8, 3, 30, 30)
    indices = [0, 3, 5, 9, 12, 20, 27]
    images, labels = dm.cached.dataset("train")[indices]
    samples = [dm.splits.train[i] for i in indices]
    assert labels.tolist() == [label for _, label in samples]
    store = square_preprocessing(30, dm.hparams.interpolation)
    fresh = torch.stack([torch.from_numpy(decoded(path, store)).permute(2, 0, 1) for path, _ in samples])
    augment = dm.train_augment()
    torch.manual_seed(0)
    boxes = augment.sample_boxes(len(indices), 30, 30)
    flips = augment.sample_flips(len(indices))
    assert torch.equal(augment.crop(images, boxes, flips), augment.crop(fresh, boxes, flips))
    batch = dm.on_after_batch_transfer((images, labels), 0)  # outside a trainer: normalised only
    assert batch[0].dtype == torch.float32 and batch[0].shape == (len(indices), 3, 30, 30)


def test_whole_image_crop_is_exact_and_flip_mirrors() -> None:
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    augment = BatchAugment(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    boxes = augment.sample_boxes(5, 16, 16)
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 5))
    none = torch.zeros(5, dtype=torch.bool)
    assert torch.equal(augment.crop(images, boxes, none), images.float())
    flips = torch.tensor([True, False, True, False, False])
    out = augment.crop(images, boxes, flips)
    assert torch.equal(out[flips], images[flips].flip(-1).float())
    # A half-size box is upsampled: the output keeps the crop's own pixel range, nothing outside it.
    half = torch.tensor([[8.0, 8.0, 16.0, 16.0]] * 5)
    crop = augment.crop(images, half, none)
    assert crop.shape == (5, 3, 16, 16)
    for i in range(5):
        region = images[i, :, 8:, 8:].float()
        assert crop[i].min() >= region.min() and crop[i].max() <= region.max()


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.35, 1.0), (0.9, 1.0)])
def test_sampled_boxes_follow_random_resized_crop(scale: tuple[float, float]) -> None:
    augment = BatchAugment(32, scale=scale)
    torch.manual_seed(1)
    boxes = augment.sample_boxes(2000, 30, 40)  # height 30, width 40
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 40).all() and (boxes[:, 3] <= 30).all()
    assert (w > 0).all() and (h > 0).all()
    area = w * h / (40 * 30)
    fallback = (w == 40) & (h == 30)  # torchvision's fallback: the whole image
    tolerance = 2.5 * (w + h) / (40 * 30)  # rounding of w and h to whole pixels
    assert (area[~fallback] >= scale[0] - tolerance[~fallback]).all()
    assert (area <= scale[1] + tolerance).all()
    assert torch.unique(boxes[:, 0]).numel() > 1 and torch.unique(w).numel() > 1  # crops vary


def test_changed_file_invalidates_and_unchanged_hits(
    mixed_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = discover(mixed_folder)
    eval_pre = Preprocessing(input_size=(32, 32))
    folder = tmp_path / "cache"
    first = open_cache(splits, eval_pre, True, folder, side=32)
    entries = sorted(folder.glob("*.npy"))

    def no_decoding(*args: object) -> None:
        raise AssertionError("a cache hit must not decode")

    monkeypatch.setattr(cache_module, "_decode", no_decoding)
    again = open_cache(splits, eval_pre, True, folder, side=32)
    assert again.entries == first.entries
    assert again.splits.skipped == first.splits.skipped
    monkeypatch.undo()

    path = splits.train[3][0]
    before = os.stat(path).st_mtime_ns
    Image.fromarray(np.full((36, 40, 3), 200, np.uint8)).save(path)
    os.utime(path, ns=(before + 10**9, before + 10**9))
    changed = open_cache(splits, eval_pre, True, folder, side=32)
    assert changed.entries["train"].path != first.entries["train"].path
    assert changed.entries["test"].path == first.entries["test"].path  # untouched split still hits
    assert len(sorted(folder.glob("*.npy"))) == len(entries) + 1
    row = changed.dataset("train")[3][0].permute(1, 2, 0).numpy()
    assert np.array_equal(row, decoded(path, square_preprocessing(32, eval_pre.interpolation)))
    assert (row == 200).all()


def test_auto_mode_and_bad_mode(mixed_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = discover(mixed_folder)
    eval_pre = Preprocessing(input_size=(32, 32))
    assert isinstance(open_cache(splits, eval_pre, "auto", tmp_path / "a"), CachedSplits)
    monkeypatch.setattr(cache_module, "cache_fits", lambda needed, folder: False)
    assert open_cache(splits, eval_pre, "auto", tmp_path / "b") is None
    assert open_cache(splits, eval_pre, False, tmp_path / "c") is None
    with pytest.raises(ValueError, match="data.cache"):
        ImageFolderDataModule(str(mixed_folder), cache="yes")


def test_training_side_never_upscales(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "d", classes=2, per_class=6, size=(32, 32))
    paths = [p for p, _ in discover(root).train]
    assert cache_module.train_side(paths, img_size=32, eval_scale=36) == 32
    assert cache_module.train_side(paths, img_size=24, eval_scale=27) == 27


def test_fit_through_the_cli_with_the_cache(mixed_folder: Path, tmp_path: Path) -> None:
    from vit.cli import main as vit_main

    vit_main(["fit", "--data.root", str(mixed_folder), "--trainer.default_root_dir", str(tmp_path / "run"),
              *TINY_MODEL_ARGS, "--trainer.max_epochs", "1", "--data.cache", "true",
              "--data.cache_dir", str(tmp_path / "cache"), "--model.ema_decay", "0.9"])  # fmt: skip
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
