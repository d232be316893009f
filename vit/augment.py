"""Training augmentation of whole uint8 batches, on whichever device trains (CPU or GPU).

Used with the decoded cache (:mod:`vit.cache`): the loader hands over uint8 ``N x 3 x S x S``
batches and this turns them into normalised model input. Random-resized crop and flip follow
torchvision's ``RandomResizedCrop`` parameters but run as one ``torchvision.ops.roi_align``
call for the whole batch (bilinear, with area averaging when a crop is shrunk), so the crop
costs a few milliseconds instead of a per-image PIL resize. Optional policies (RandAugment,
TrivialAugment, AugMix, AutoAugment), colour jitter and random erasing are torchvision v2
transforms applied per image, since their random choice must differ between images.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
from torchvision.ops import roi_align
from torchvision.transforms import v2

from serve.preprocess import normalization


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or 0..255 float) NCHW -> float32, with :meth:`Preprocessing.normalize`'s arithmetic."""
    scale, offset = normalization(mean, std)
    x = images.to(torch.float32)
    scale_t = torch.tensor(scale, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    offset_t = torch.tensor(offset, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x * scale_t - offset_t


def parse_policy(auto_augment: str | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``rand-m9-n2…`` (timm-style), ``trivial``, ``augmix`` or ``autoaug`` -> a v2 transform."""
    if not auto_augment:
        return None
    name = auto_augment.lower()
    if name.startswith("rand"):
        magnitude = re.search(r"-m(\d+)", name)
        num_ops = re.search(r"-n(\d+)", name)
        return v2.RandAugment(
            num_ops=int(num_ops.group(1)) if num_ops else 2,
            magnitude=int(magnitude.group(1)) if magnitude else 9,
        )
    if name.startswith(("trivial", "ta_wide")):
        return v2.TrivialAugmentWide()
    if name.startswith("augmix"):
        return v2.AugMix()
    if name.startswith(("autoaug", "original", "v0")):
        return v2.AutoAugment()
    raise ValueError(
        f"data.auto_augment: unknown policy {auto_augment!r} for the decoded cache; "
        "use rand-m<M>-n<N>, trivial, augmix or autoaug"
    )


class BatchAugment:
    """Random-resized crop + flip (+ optional policy, jitter, erasing) + normalisation of a batch.

    Args:
        size: output side (the model's ``img_size``).
        scale, ratio: crop area fraction and aspect range, as in ``RandomResizedCrop``.
        hflip: horizontal-flip probability.
        mean, std: normalisation.
        auto_augment: policy name (see :func:`parse_policy`) or None.
        color_jitter: brightness/contrast/saturation strength or None.
        re_prob: random-erasing probability (erased area set to 0 after normalisation).
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
    ) -> None:
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self.mean, self.std = tuple(mean), tuple(std)
        self.policy = parse_policy(auto_augment)
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

    def _per_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Policy and jitter, one image at a time on uint8 (their random draws differ per image)."""
        images = pixels.round_().clamp_(0, 255).to(torch.uint8)
        out = []
        for image in images:
            if self.policy is not None:
                image = self.policy(image)
            if self.jitter is not None:
                image = self.jitter(image)
            out.append(image)
        return torch.stack(out)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``N x 3 x H x W`` -> normalised float32 ``N x 3 x size x size``."""
        n, _, height, width = images.shape
        boxes = self.sample_boxes(n, height, width, images.device)
        pixels = self.crop(images, boxes, self.sample_flips(n, images.device))
        if self.policy is not None or self.jitter is not None:
            pixels = self._per_image(pixels)
        x = normalize(pixels, self.mean, self.std)
        if self.erase is not None:
            x = torch.stack([self.erase(image) for image in x])
        return x
