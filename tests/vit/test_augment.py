"""Training augmentation: every preset's policy survives every op at its extreme magnitudes, and
the cached and uncached paths read the same timm policy strings."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.imagegen import write_class_folder
from vit.augment import BatchAugment, augment_ops, check_policy, timm_policy
from vit.data import ImageFolderDataModule

PRESETS = sorted(Path("configs").glob("*.yaml"))
POLICIES = ["rand-m9-mstd0.5-inc1", "rand-m9-n2", "rand-m10-mstd1-inc0", "rand-m7-tweights", "augmix-m5-w4-d2",
            "v0", "original", "v0r"]  # fmt: skip
MAGNITUDE_MAX = 10.0  # timm's _LEVEL_DENOM: the upper clip of a sampled magnitude


def images(count: int, size: int = 40, seed: int = 0) -> list[Image.Image]:
    """Noise, flat grey, black, white and colour gradients: the inputs that break ops."""
    rng = np.random.default_rng(seed)
    out = [Image.new("RGB", (size, size), c) for c in ((0, 0, 0), (255, 255, 255), (128, 128, 128))]
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    out.append(Image.fromarray(np.stack(np.broadcast_arrays(ramp[None], ramp[:, None], ramp[None] // 2), -1)))
    while len(out) < count:
        out.append(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    return out


def preset_data(preset: Path) -> dict:
    return yaml.safe_load(preset.read_text()).get("data") or {}


def extreme_ops(transform: object) -> list:
    """A copy of each timm op of ``transform``, always applied, at magnitude 0 and at the maximum."""
    ops = []
    for op in augment_ops(transform):
        for magnitude in (0.0, op.magnitude_max or MAGNITUDE_MAX):
            fixed = copy.copy(op)
            fixed.prob, fixed.magnitude, fixed.magnitude_std = 1.0, magnitude, 0.0
            ops.append(fixed)
    return ops


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_augmentation_runs_every_op_at_its_extremes(preset: Path, tmp_path: Path) -> None:
    data = {k: v for k, v in preset_data(preset).items() if k not in ("root", "num_workers")}
    folder = write_class_folder(tmp_path / "d", classes=2, per_class=3, size=(40, 40))
    dm = ImageFolderDataModule(str(folder), img_size=32, **data)
    transform = dm.train_transform()
    for op in extreme_ops(transform):
        for image in images(6):
            assert op(image).size == image.size, op
    random.seed(0)
    for image in images(300, seed=1):  # the whole transform, sampled as in training
        assert transform(image).shape == (3, 32, 32)
    augment = dm.train_augment()  # the decoded-cache path of the same preset
    batch = torch.from_numpy(np.stack([np.asarray(i) for i in images(64)])).permute(0, 3, 1, 2)
    assert augment(batch).shape == (64, 3, 32, 32)


def test_a_224_preset_policy_posterizes_to_one_bit_at_the_top_magnitude() -> None:
    policy = timm_policy("rand-m9-mstd0.5-inc1", 224)
    (posterize,) = [op for op in extreme_ops(policy) if op.name == "PosterizeIncreasing" and op.magnitude]
    noise = images(5)[-1]
    out = np.asarray(posterize(noise))
    assert set(np.unique(out)) <= {0, 128} and len(np.unique(out)) == 2  # 1 bit kept, not black


@pytest.mark.parametrize("policy", POLICIES)
def test_both_paths_accept_the_same_policy_strings(policy: str, tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "d", classes=2, per_class=3, size=(40, 40))
    uncached = ImageFolderDataModule(str(folder), img_size=32, auto_augment=policy).train_transform()
    cached = BatchAugment(32, auto_augment=policy)
    names = sorted(op.name for op in augment_ops(uncached))
    assert names and names == sorted(op.name for op in augment_ops(cached.policy))
    batch = torch.from_numpy(np.stack([np.asarray(i) for i in images(8)])).permute(0, 3, 1, 2)
    assert cached(batch).shape == (8, 3, 32, 32)


@pytest.mark.parametrize("policy", ["trivial", "rand-m9-q3", "randaugment-please"])
def test_unknown_policy_strings_are_refused_on_both_paths(policy: str, tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "d", classes=2, per_class=3, size=(40, 40))
    with pytest.raises(ValueError, match="data.auto_augment"):
        check_policy(policy)
    with pytest.raises(ValueError, match="data.auto_augment"):
        ImageFolderDataModule(str(folder), img_size=32, auto_augment=policy, cache=True)
    with pytest.raises(ValueError, match="data.auto_augment"):
        BatchAugment(32, auto_augment=policy)


def shift_of(original: torch.Tensor, shifted: torch.Tensor, limit: int) -> tuple[int, int] | None:
    """The (down, right) offset within ``limit`` that turns ``original`` into ``shifted`` with zero fill."""
    side = original.shape[-1]
    padded = torch.nn.functional.pad(original, (limit, limit, limit, limit))
    for top in range(2 * limit + 1):
        for left in range(2 * limit + 1):
            if torch.equal(padded[..., top : top + side, left : left + side], shifted):
                return limit - top, limit - left
    return None


def test_translate_moves_each_image_by_whole_pixels_with_zero_fill() -> None:
    augment = BatchAugment(12, scale=(1.0, 1.0), hflip=0.0, translate=3)
    torch.manual_seed(0)
    batch = torch.randint(1, 256, (64, 3, 12, 12), dtype=torch.uint8)  # no zero pixel of its own
    shifted = augment.shift(batch.float())
    offsets = [shift_of(batch[i].float(), shifted[i], 3) for i in range(len(batch))]
    assert None not in offsets  # every image is an exact copy, moved, padded with zeros
    assert len(set(offsets)) > 10  # each image draws its own offset
    assert {abs(d) for offset in offsets for d in offset} >= {0, 3}  # the whole range is used


def test_translate_zero_leaves_the_crop_alone_and_the_batch_is_normalised() -> None:
    batch = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    still = BatchAugment(
        16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, mean=(0, 0, 0), std=(1 / 255,) * 3
    )
    assert torch.allclose(still(batch), batch.float())
    moved = BatchAugment(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, translate=2)
    assert moved(batch).shape == (4, 3, 16, 16)


def test_the_uncached_path_translates_after_timms_crop_and_flip(tmp_path: Path) -> None:
    folder = write_class_folder(tmp_path / "d", classes=2, per_class=3, size=(40, 40))
    transform = ImageFolderDataModule(str(folder), img_size=32, translate=4).train_transform()
    crops = [t for t in transform.transforms if type(t).__name__ == "RandomCrop"]
    assert len(crops) == 1 and crops[0].padding == 4 and crops[0].size == (32, 32)
    assert transform(images(1)[0]).shape == (3, 32, 32)
    plain = ImageFolderDataModule(str(folder), img_size=32).train_transform()
    assert not [t for t in plain.transforms if type(t).__name__ == "RandomCrop"]
