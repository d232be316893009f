"""Datasets and the LightningDataModule for an image folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from timm.data import create_transform
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
)
from torchvision import transforms

from serve.preprocess import DEFAULT_MAX_PIXELS, IMAGENET_MEAN, IMAGENET_STD, Preprocessing, decode_image
from vit.augment import BatchAugment, check_policy, guard_posterize, normalize
from vit.cache import CACHE_MODES, CachedImageDataset, CachedSplits, open_cache
from vit.doctor import log_fit_warning
from vit.folder import (
    Sample,
    Splits,
    discover,
    drop_bad_images,
    format_skip_report,
    mostly_grey,
    probe_headers,
)


def default_num_workers() -> int:
    """On a small machine the model needs the cores too: at most 2 loader processes."""
    return min(2, os.cpu_count() or 1)


class ImageFolderDataset(Dataset):
    """(path, label) samples decoded with the shared decoder and passed through ``transform``."""

    def __init__(
        self,
        samples: list[Sample],
        transform: Callable[[Any], Any],
        max_pixels: int = DEFAULT_MAX_PIXELS,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.max_pixels = max_pixels
        self.preprocessing = preprocessing  # lets the decoder use JPEG draft mode for eval

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = decode_image(path, max_pixels=self.max_pixels, preprocessing=self.preprocessing)
        return self.transform(image), label


class EvalTransform:
    """The shared torch-free preprocessing, returning a tensor (picklable for workers)."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.from_numpy(self.preprocessing(image))


class ImageFolderDataModule(pl.LightningDataModule):
    """An image folder as train/val/test loaders.

    Args:
        root: ``root/<class>/…`` or ``root/{train,val[,test]}/<class>/…``.
        img_size: model input size (linked from ``model.img_size`` by the CLI).
        val_fraction: share of each class held out when there is no ``val/`` folder.
        seed: seed of that split.
        batch_size: per device.
        num_workers: loader processes (default: up to 2).
        eval_crop_pct: evaluation centre-crop fraction (timm's ``crop_pct``).
        interpolation: resize filter for training and evaluation.
        mean, std: normalisation.
        scale: random-resized-crop area range for training.
        hflip: horizontal-flip probability; ``"auto"``: 0 for a grey folder (digits, text, scans:
            a mirror image is another thing), else 0.5 (vit.folder.mostly_grey on the headers).
        auto_augment: timm policy string (e.g. ``rand-m9-mstd0.5-inc1``) or None.
        re_prob: random-erasing probability.
        translate: random shift of up to this many pixels after the crop, zero fill (pad and
            crop, the CIFAR standard; timm's transforms have none); 0 for none.
        color_jitter: colour-jitter strength (ignored when ``auto_augment`` is set).
        balanced_sampling: sample classes equally often (weights 1 / class count).
        max_pixels: larger images are reported and skipped.
        check_images: decode every file once before training and skip the bad ones.
        cache: decode every image once into a memory-mapped uint8 cache (:mod:`vit.cache`) and
            augment whole batches on the training device (:mod:`vit.augment`); ``"auto"`` when
            the arrays take under half the free memory and disk. Files are always checked.
        cache_dir: where cache entries live (default ``$VIT_CACHE_DIR`` or ``~/.cache/vit/decoded``).
        cache_size: stored side of the training images (default: ``img_size / eval_crop_pct``,
            never above the images' median shorter side); random crops are cut from it.
    """

    def __init__(
        self,
        root: str,
        img_size: int = 224,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int | None = None,
        eval_crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: float | str = 0.5,
        auto_augment: str | None = None,
        re_prob: float = 0.0,
        translate: int = 0,
        color_jitter: float | None = None,
        balanced_sampling: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        check_images: bool = True,
        cache: bool | str = False,
        cache_dir: str | None = None,
        cache_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.splits: Splits = discover(root, val_fraction=val_fraction, seed=seed)
        if hflip == "auto":
            grey = mostly_grey(probe_headers([path for path, _ in self.splits.train]))
            self.hparams.hflip = 0.0 if grey else 0.5
        elif isinstance(hflip, str):
            raise ValueError(f"data.hflip must be a probability or 'auto', got {hflip!r}")
        self.preprocessing = Preprocessing(
            input_size=(img_size, img_size),
            crop_pct=eval_crop_pct,
            interpolation=interpolation,
            mean=tuple(mean),
            std=tuple(std),
        )
        if cache not in CACHE_MODES:
            raise ValueError(f"data.cache must be true, false or 'auto', got {cache!r}")
        check_policy(auto_augment)  # before any decoding: both loader paths read timm's grammar
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.cached: CachedSplits | None = None
        self._augment: BatchAugment | None = None
        self._checked = False

    # The CLI links these two into the model, so every checkpoint carries them.
    @property
    def class_names(self) -> list[str]:
        return list(self.splits.classes)

    @property
    def preprocessing_dict(self) -> dict[str, Any]:
        return self.preprocessing.to_dict()

    def train_transform(self) -> Callable[[Any], torch.Tensor]:
        hp = self.hparams
        transform = create_transform(
            input_size=hp.img_size,
            is_training=True,
            scale=tuple(hp.scale),
            hflip=hp.hflip,
            auto_augment=hp.auto_augment,
            color_jitter=hp.color_jitter if hp.color_jitter is not None else 0.0,
            re_prob=hp.re_prob,
            interpolation=hp.interpolation,
            mean=tuple(hp.mean),
            std=tuple(hp.std),
            separate=True,
        )
        crop_and_flip, policy, final = transform
        # timm's training transform has no pad-and-crop; torchvision's, after timm's crop and flip.
        shift = [transforms.RandomCrop(hp.img_size, padding=hp.translate)] if hp.translate > 0 else []
        return guard_posterize(transforms.Compose([crop_and_flip, *shift, policy, final]))

    def setup(self, stage: str | None = None) -> None:
        if self._checked:
            return
        self._checked = True
        hp = self.hparams
        self.cached = open_cache(
            self.splits, self.preprocessing, hp.cache, hp.cache_dir, hp.cache_size, hp.max_pixels
        )
        if self.cached is not None:
            self.splits = self.cached.splits
            if self.splits.skipped:
                rank_zero_info(format_skip_report(self.splits.skipped))
        elif self.hparams.check_images:
            self.splits = drop_bad_images(self.splits, self.hparams.max_pixels)
            if self.splits.skipped:
                rank_zero_info(format_skip_report(self.splits.skipped))
        log_fit_warning(stage, self.splits, hp.root, hp.val_fraction, hp.seed)  # vit doctor's cheap checks
        counts = self.splits.class_counts("train")
        rank_zero_info(
            f"{len(self.splits.classes)} classes, {len(self.splits.train)} train / {len(self.splits.val)} val"
            f" / {len(self.splits.test)} test images; train images per class: "
            + ", ".join(f"{name}={n}" for name, n in counts.items())
        )

    # -- decoded cache (vit.cache / vit.augment) ----------------------------------------------
    def train_augment(self) -> BatchAugment:
        hp = self.hparams
        return BatchAugment(
            hp.img_size,
            scale=tuple(hp.scale),
            hflip=hp.hflip,
            mean=tuple(hp.mean),
            std=tuple(hp.std),
            auto_augment=hp.auto_augment,
            color_jitter=None if hp.auto_augment else hp.color_jitter,  # as timm's uncached path
            re_prob=hp.re_prob,
            interpolation=hp.interpolation,
            translate=hp.translate,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Cached batches arrive as uint8: augment (training) or normalise them on the device."""
        images, targets = batch
        if images.dtype != torch.uint8:
            return batch
        if self.trainer is not None and self.trainer.training:
            if self._augment is None:
                self._augment = self.train_augment()
            return self._augment(images), targets
        return normalize(images, self.hparams.mean, self.hparams.std), targets

    def _dataset(self, split: str, training: bool) -> Dataset:
        if self.cached is not None:
            return self.cached.dataset(split)
        samples = getattr(self.splits, split)
        if training:
            return ImageFolderDataset(samples, self.train_transform(), self.hparams.max_pixels)
        return ImageFolderDataset(
            samples, EvalTransform(self.preprocessing), self.hparams.max_pixels, self.preprocessing
        )

    def _loader(
        self, dataset: Dataset, shuffle: bool, sampler: Any = None, drop_last: bool = False
    ) -> DataLoader:
        if isinstance(dataset, CachedImageDataset):
            # One memory-mapped read per batch; no worker processes unless asked for.
            base = sampler or (RandomSampler(dataset) if shuffle else SequentialSampler(dataset))
            workers = self.hparams.num_workers or 0
            return DataLoader(
                dataset,
                sampler=BatchSampler(base, self.hparams.batch_size, drop_last),
                batch_size=None,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=torch.cuda.is_available(),
            )
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=drop_last,
        )

    def class_balanced_sampler(self) -> WeightedRandomSampler:
        labels = np.array([label for _, label in self.splits.train])
        counts = np.bincount(labels, minlength=len(self.splits.classes))
        weights = 1.0 / counts[labels]
        return WeightedRandomSampler(weights.tolist(), num_samples=len(labels), replacement=True)

    def train_dataloader(self) -> DataLoader:
        sampler = self.class_balanced_sampler() if self.hparams.balanced_sampling else None
        dataset = self._dataset("train", training=True)
        drop_last = len(dataset) > self.hparams.batch_size
        return self._loader(dataset, shuffle=True, sampler=sampler, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val", training=False), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        split = "test" if self.splits.test else "val"
        return self._loader(self._dataset(split, training=False), shuffle=False)
