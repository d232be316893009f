"""Training augmentation of whole uint8 batches, on whichever device trains (CPU or GPU).

Used with the decoded cache (:mod:`vit.cache`): the loader hands over uint8 ``N x 3 x S x S``
batches and this turns them into normalised model input. Random-resized crop and flip follow
torchvision's ``RandomResizedCrop`` parameters but run as one ``torchvision.ops.roi_align``
call for the whole batch (bilinear, with area averaging when a crop is shrunk), so the crop
costs a few milliseconds instead of a per-image PIL resize. Optional policies (timm's
RandAugment, AugMix, AutoAugment on PIL images), colour jitter and random erasing (torchvision
v2 transforms) are applied per image, since their random choice must differ between images; the
policy is timm's own (:func:`timm_policy`), the same one the uncached path builds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data.auto_augment import (
    AugmentOp,
    augment_and_mix_transform,
    auto_augment_transform,
    rand_augment_transform,
)
from timm.data.transforms import str_to_pil_interp
from torchvision.ops import roi_align
from torchvision.transforms import v2

from serve.preprocess import normalization

T = TypeVar("T")


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or 0..255 float) NCHW -> float32, with :meth:`Preprocessing.normalize`'s arithmetic."""
    scale, offset = normalization(mean, std)
    x = images.to(torch.float32)
    scale_t = torch.tensor(scale, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    offset_t = torch.tensor(offset, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x * scale_t - offset_t


def posterize_at_least_one_bit(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize with the bit count clamped to 1..8.

    timm's RandAugment (``inc1`` at the top magnitude, or the plain op at magnitude 0) and its
    AutoAugment policies ask for 0 bits; Pillow 13 refuses that (``bits must be between or
    equal to 1 and 8``), older Pillow returned a black image. One bit is the strongest
    posterize Pillow allows, and a black image carries no trace of its label anyway.
    """
    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, max(1, int(bits_to_keep)))


def augment_ops(transform: Any) -> list[AugmentOp]:
    """Every timm ``AugmentOp`` inside ``transform`` (a Compose, RandAugment, AutoAugment, AugMix)."""
    if isinstance(transform, AugmentOp):
        return [transform]
    if isinstance(transform, (list, tuple)):
        return [op for item in transform for op in augment_ops(item)]
    found: list[AugmentOp] = []
    for attribute in ("transforms", "ops", "policy"):
        found += augment_ops(getattr(transform, attribute, []))
    return found


def guard_posterize(transform: T) -> T:
    """``transform`` with every posterize op of its timm policy made safe (in place); returns it."""
    for op in augment_ops(transform):
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize_at_least_one_bit
    return transform


def timm_policy(
    auto_augment: str | None,
    img_size: int,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    interpolation: str = "bicubic",
) -> Callable[[Image.Image], Image.Image] | None:
    """The PIL policy timm's ``create_transform`` builds for ``auto_augment`` (rand-…, augmix-…,
    v0/original…), posterize guarded; None for no policy.

    The decoded-cache path applies it per image, so both paths read the same policy strings
    with the same meaning. The parameters are timm's (``transforms_imagenet_train`` builds them
    inline, so they are repeated here); unknown strings are refused with a clear error.
    """
    if not auto_augment:
        return None
    params: dict[str, Any] = {
        "translate_const": int(img_size * 0.45),
        "img_mean": tuple(min(255, round(255 * x)) for x in mean),
    }
    if interpolation and interpolation != "random":
        params["interpolation"] = str_to_pil_interp(interpolation)
    try:
        if auto_augment.startswith("rand"):
            policy = rand_augment_transform(auto_augment, params)
        elif auto_augment.startswith("augmix"):
            policy = augment_and_mix_transform(auto_augment, {**params, "translate_pct": 0.3})
        else:
            policy = auto_augment_transform(auto_augment, params)
    except (AssertionError, KeyError, ValueError) as exc:
        raise ValueError(f"data.auto_augment: {auto_augment!r} is not a timm policy string ({exc})") from exc
    return guard_posterize(policy)


def check_policy(auto_augment: str | None) -> None:
    """Raise a ValueError naming ``data.auto_augment`` when timm cannot read the policy string."""
    timm_policy(auto_augment, 32)


class BatchAugment:
    """Random-resized crop + flip (+ optional policy, jitter, erasing) + normalisation of a batch.

    Args:
        size: output side (the model's ``img_size``).
        scale, ratio: crop area fraction and aspect range, as in ``RandomResizedCrop``.
        hflip: horizontal-flip probability.
        mean, std: normalisation.
        auto_augment: timm policy string (see :func:`timm_policy`) or None.
        interpolation: resampling filter of the policy's geometric ops.
        color_jitter: brightness/contrast/saturation strength or None.
        re_prob: random-erasing probability (erased area set to 0 after normalisation).
        translate: largest shift in output pixels after the crop (zero fill), as torchvision's
            ``RandomCrop(size, padding=translate)`` on the uncached path; 0 for none.
    """

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        auto_augment: str | None = None,
        color_jitter: float | None = None,
        re_prob: float = 0.0,
        interpolation: str = "bicubic",
        translate: int = 0,
    ) -> None:
        self.size = int(size)
        self.translate = int(translate)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self.mean, self.std = tuple(mean), tuple(std)
        self.policy = timm_policy(auto_augment, self.size, self.mean, interpolation)
        self.jitter = v2.ColorJitter(color_jitter, color_jitter, color_jitter) if color_jitter else None
        self.erase = v2.RandomErasing(p=re_prob, value=0.0) if re_prob > 0 else None

    def sample_boxes(
        self, n: int, height: int, width: int, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """``n`` crop boxes (x0, y0, x1, y1) in pixel-edge coordinates, vectorised torchvision logic.

        Ten tries per image of (area, log-uniform aspect); the first that fits is used, otherwise
        the whole image clipped to the aspect range, centred (torchvision's fallback).
        """
        tries = 10
        area = height * width * torch.empty(n, tries, device=device).uniform_(*self.scale)
        log_ratio = torch.empty(n, tries, device=device).uniform_(
            math.log(self.ratio[0]), math.log(self.ratio[1])
        )
        aspect = torch.exp(log_ratio)
        w = torch.round(torch.sqrt(area * aspect))
        h = torch.round(torch.sqrt(area / aspect))
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        top = torch.floor(torch.rand(n, device=device) * (height - h + 1))
        left = torch.floor(torch.rand(n, device=device) * (width - w + 1))
        # Fallback: centre crop, aspect clipped to the ratio range.
        in_ratio = width / height
        fw, fh = float(width), float(height)
        if in_ratio < self.ratio[0]:
            fh = float(round(fw / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            fw = float(round(fh * self.ratio[1]))
        ok = fits.any(dim=1)
        w = torch.where(ok, w, torch.full_like(w, fw))
        h = torch.where(ok, h, torch.full_like(h, fh))
        top = torch.where(ok, top, torch.full_like(top, (height - fh) // 2))
        left = torch.where(ok, left, torch.full_like(left, (width - fw) // 2))
        return torch.stack([left, top, left + w, top + h], dim=1)

    def sample_flips(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.rand(n, device=device) < self.hflip

    def crop(self, images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Cut ``boxes`` out of uint8 ``images``, resize to ``size``, flip where asked; float 0..255.

        ``aligned=True`` puts sample points on pixel centres: a box covering the whole image at
        its own size returns the pixels unchanged.
        """
        index = torch.arange(images.shape[0], device=images.device, dtype=torch.float32).unsqueeze(1)
        rois = torch.cat([index, boxes.to(device=images.device, dtype=torch.float32)], dim=1)
        out = roi_align(images.float(), rois, (self.size, self.size), 1.0, -1, True)
        flips = flips.to(images.device).view(-1, 1, 1, 1)
        return torch.where(flips, out.flip(-1), out)

    def shift(self, pixels: torch.Tensor) -> torch.Tensor:
        """Each image moved by its own random integer offset in ``[-translate, translate]``, zero fill.

        The CIFAR standard (pad, then crop at a random place), done for the whole batch with one
        indexing op; pixels stay exact since the offsets are whole pixels.
        """
        if self.translate <= 0:
            return pixels
        n, _, height, width = pixels.shape
        t = self.translate
        padded = torch.nn.functional.pad(pixels, (t, t, t, t))
        top = torch.randint(0, 2 * t + 1, (n, 1), device=pixels.device)
        left = torch.randint(0, 2 * t + 1, (n, 1), device=pixels.device)
        rows = (top + torch.arange(height, device=pixels.device)).view(n, 1, height, 1)
        cols = (left + torch.arange(width, device=pixels.device)).view(n, 1, 1, width)
        batch = torch.arange(n, device=pixels.device).view(n, 1, 1, 1)
        channels = torch.arange(pixels.shape[1], device=pixels.device).view(1, -1, 1, 1)
        return padded[batch, channels, rows, cols]

    def _per_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Policy and jitter, one image at a time on uint8 (their random draws differ per image)."""
        images = pixels.round_().clamp_(0, 255).to(torch.uint8)
        out = []
        for image in images:
            if self.policy is not None:  # timm's policies are PIL ops: on the CPU, image by image
                picture = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
                pixels_hwc = np.asarray(self.policy(picture).convert("RGB"))
                image = torch.from_numpy(pixels_hwc.copy()).permute(2, 0, 1).to(images.device)
            if self.jitter is not None:
                image = self.jitter(image)
            out.append(image)
        return torch.stack(out)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``N x 3 x H x W`` -> normalised float32 ``N x 3 x size x size``."""
        n, _, height, width = images.shape
        boxes = self.sample_boxes(n, height, width, images.device)
        pixels = self.shift(self.crop(images, boxes, self.sample_flips(n, images.device)))
        if self.policy is not None or self.jitter is not None:
            pixels = self._per_image(pixels)
        x = normalize(pixels, self.mean, self.std)
        if self.erase is not None:
            x = torch.stack([self.erase(image) for image in x])
        return x
