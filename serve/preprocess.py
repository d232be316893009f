"""The one definition of how an image becomes model input (torch-free).

Training's validation transform, the export self-check, ``vit predict``/``vit eval`` and the
server all call :meth:`Preprocessing.__call__` on images decoded by :func:`decode_image`, so a
served model is fed exactly as it was validated. The definition is a small value object that
is stored in every checkpoint and in the ONNX metadata.

Geometry follows timm's evaluation transform (``resolve_data_config`` + ``create_transform``):
resize so the crop covers ``crop_pct`` of the shorter side, centre-crop ``input_size``, scale
to [0, 1], subtract ``mean``, divide by ``std``, channels first (RGB).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 50_000_000
# The formats decoded by default: what cameras, browsers and data sets produce. Pillow has ~40
# more decoders (EPS hands the bytes to Ghostscript); none of them runs unless asked for.
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
CROP_MODES = ("center", "squash")


class ImageError(ValueError):
    """An input that cannot become model input; the message says why."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed (decompression-bomb guard)."""


class UnsupportedImageError(ImageError):
    """The image's format is not on the allow-list (no decoder plugin ran for it)."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize, centre-crop and normalise; the same numbers wherever the model is fed.

    input_size: (height, width) of the model input.
    crop_pct: fraction of the resized image kept by the centre crop (timm's ``crop_pct``).
    crop_mode: ``center`` keeps the aspect ratio (shorter side to ``input/crop_pct``);
        ``squash`` resizes both sides to ``input/crop_pct`` regardless of aspect.
    interpolation: PIL resampling filter name.
    jpeg_draft: let libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale when that still
        leaves at least the resize target (cheap, and applied identically everywhere).
    """

    input_size: tuple[int, int] = (224, 224)
    crop_pct: float = 0.875
    crop_mode: str = "center"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    jpeg_draft: bool = True
    channel_order: str = field(default="RGB", init=False)
    layout: str = field(default="NCHW", init=False)

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, int):
            size = (size, size)
        size = tuple(int(s) for s in size)
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"preprocessing.input_size must be two positive integers, got {self.input_size}")
        if not 0.0 < float(self.crop_pct) <= 1.0:
            raise ValueError(f"preprocessing.crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"preprocessing.crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"preprocessing.interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("preprocessing.mean and preprocessing.std need three values, std > 0")

    @property
    def scale_size(self) -> tuple[int, int]:
        """(height, width) the image is resized to before the centre crop (timm's rule)."""
        return tuple(math.floor(s / self.crop_pct) for s in self.input_size)  # type: ignore[return-value]

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the resized image for a source of the given size."""
        scale_h, scale_w = self.scale_size
        if self.crop_mode == "squash" or scale_h != scale_w:
            return scale_w, scale_h
        # torchvision's Resize(int): the shorter side becomes `scale`, the longer keeps aspect.
        if width <= height:
            return scale_w, int(scale_w * height / width)
        return int(scale_h * width / height), scale_h

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """The geometric half: resize, then centre-crop to ``input_size``. Returns RGB PIL."""
        new_size = self.resized_size(*image.size)
        if new_size != image.size:
            image = image.resize(new_size, INTERPOLATIONS[self.interpolation])
        crop_h, crop_w = self.input_size
        width, height = image.size
        if width < crop_w or height < crop_h:  # only for crop_pct > 1-like rounding: pad like torchvision
            image = ImageOps.pad(image, (max(width, crop_w), max(height, crop_h)), color=(0, 0, 0))
            width, height = image.size
        left, top = self.crop_origin(width, height)
        return image.crop((left, top, left + crop_w, top + crop_h))

    def crop_origin(self, resized_w: int, resized_h: int) -> tuple[int, int]:
        """(left, top) of the centre crop in an image resized to the given size (torchvision's rounding)."""
        crop_h, crop_w = self.input_size
        return int(round((resized_w - crop_w) / 2.0)), int(round((resized_h - crop_h) / 2.0))

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The centre crop the model sees, as fractions (left, top, right, bottom) of a source image."""
        resized_w, resized_h = self.resized_size(width, height)
        crop_h, crop_w = self.input_size
        left, top = self.crop_origin(resized_w, resized_h)
        return (
            max(left, 0) / resized_w,
            max(top, 0) / resized_h,
            min(left + crop_w, resized_w) / resized_w,
            min(top + crop_h, resized_h) / resized_h,
        )

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 HWC (or NHWC) RGB -> float32 CHW (or NCHW): ``(pixels / 255 - mean) / std``."""
        scale, offset = normalization(self.mean, self.std)
        channels = np.moveaxis(np.asarray(pixels), -1, -3)
        out = np.empty(channels.shape, np.float32)
        for c in range(3):  # one multiply and one subtract per channel, written in place
            plane = out[..., c, :, :]
            np.multiply(
                channels[..., c, :, :], np.float32(scale[c]), out=plane, dtype=np.float32, casting="unsafe"
            )
            plane -= np.float32(offset[c])
        return out

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 array [3, H, W], ready to batch."""
        return self.normalize(np.asarray(self.resize_and_crop(image)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        fixed = {"channel_order": "RGB", "layout": "NCHW"}
        for key, expected in fixed.items():
            if key in data and data[key] != expected:
                raise ValueError(f"preprocessing.{key} must be {expected!r}, got {data[key]!r}")
        known = {"input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "jpeg_draft"}
        unknown = set(data) - known - set(fixed)
        if unknown:
            raise ValueError(f"unknown preprocessing field(s): {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in data.items() if k in known})


def normalization(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per-channel ``(scale, offset)`` with ``(x / 255 - mean) / std == x * scale - offset``.

    The one normalisation arithmetic (this module and :func:`vit.augment.normalize` use it, so
    cached training batches equal served inputs bit for bit): two float32 operations per value
    instead of four, an order of magnitude faster than the textbook expression on a 224 px image
    (docs/BENCHMARKS.md); the results differ from it by float32 rounding only.
    """
    return [1.0 / (255.0 * s) for s in std], [m / s for m, s in zip(mean, std, strict=True)]


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparent images onto white, so transparency never reads as black."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
# Conversions run on bands of about this many pixels: the float64 rescale of a 16-bit image
# and the alpha flattening need several full-size temporaries (28 and 16 bytes per pixel),
# which on a 40 Mpx image is 1.1 GB and 640 MB; by bands they cost 8 to 30 MB whatever the size.
BAND_PIXELS = 1 << 20


def _rescale_wide(image: Image.Image, top: float) -> Image.Image:
    """16-bit, 32-bit integer and float pixels -> 8-bit RGB, ``top`` mapped to 255."""
    # PIL's own convert() clips these to 0..255 instead of rescaling them.
    array = np.asarray(image, dtype=np.float64)
    array = np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(array, "L").convert("RGB")


def _converter(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """The per-pixel conversion of ``image``'s mode to 8-bit RGB (decided once, for every band)."""
    if image.mode in WIDE_MODES:
        # The scale is the whole image's (from band maxima, so no full-size copy is made).
        high = np.max([np.asarray(band).max(initial=0) for band in _bands(image)], initial=0)
        top = 65535.0 if image.mode.startswith("I;16") or high > 255 else 255.0
        return lambda band: _rescale_wide(band, top)
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        return _flatten_alpha
    return lambda band: band.convert("RGB")


def _bands(image: Image.Image) -> Iterator[Image.Image]:
    """``image`` as horizontal strips of about :data:`BAND_PIXELS` pixels (the image itself if smaller)."""
    width, height = image.size
    rows = max(1, BAND_PIXELS // max(width, 1))
    if rows >= height:
        yield image
        return
    for top in range(0, height, rows):
        yield image.crop((0, top, width, min(top + rows, height)))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (16-bit and float modes rescaled, alpha flattened on white).

    Every conversion is per pixel, so converting band by band gives the same pixels as
    converting at once while the temporaries stay the size of one band.
    """
    if image.mode == "RGB":
        return image
    convert = _converter(image)
    width, height = image.size
    if width * height <= BAND_PIXELS:
        return convert(image)
    out = Image.new("RGB", image.size)
    y = 0
    for band in _bands(image):
        out.paste(convert(band), (0, y))
        y += band.height
    return out


def check_size(image: Image.Image, name: str, max_pixels: int, preprocessing: Preprocessing | None) -> None:
    """Refuse, before decoding, an image above ``max_pixels`` at the source or after the resize.

    The resize step can make an image far larger than its source: under a centre-crop policy
    a 1 x 200,000 strip becomes 256 x 51,200,000 before the crop. The JPEG draft stage is
    never larger than the source, and every later stage never larger than these two.
    """
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
        )
    if preprocessing is None:
        return
    # EXIF orientation may swap the sides, and reading it decodes a PNG: check both ways.
    for w, h in ((width, height), (height, width)):
        resized_w, resized_h = preprocessing.resized_size(w, h)
        if resized_w * resized_h > max_pixels:
            crop_h, crop_w = preprocessing.input_size
            raise ImageTooLargeError(
                f"{name}: {w}x{h} would be resized to {resized_w}x{resized_h} = "
                f"{resized_w * resized_h} pixels before the {crop_w}x{crop_h} crop, "
                f"above the limit of {max_pixels}"
            )


def _draft_target(image: Image.Image, preprocessing: Preprocessing) -> tuple[int, int]:
    """The resize target in the stored (unrotated) frame of a JPEG, where ``draft`` works."""
    width, height = image.size
    if image.getexif().get(0x0112) in (5, 6, 7, 8):  # JPEG's EXIF is read with its header
        resized_w, resized_h = preprocessing.resized_size(height, width)
        return resized_h, resized_w
    return preprocessing.resized_size(width, height)


def decode_image(
    source: bytes | str | Path | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    preprocessing: Preprocessing | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> Image.Image:
    """Bytes or a path -> upright 8-bit RGB PIL image; :class:`ImageError` says why not.

    EXIF orientation is applied and animated images give their first frame. Only ``formats``
    are opened (any other is :class:`UnsupportedImageError` before its plugin runs). Images
    above ``max_pixels`` at the source, or with ``preprocessing`` after its resize, are refused
    before their pixels are decoded. With ``jpeg_draft`` set, large JPEGs are decoded at
    reduced scale (never below the resize target).
    """
    name = str(source) if isinstance(source, (str, Path)) else "image"
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream, formats=list(formats))
            check_size(image, name, max_pixels, preprocessing)
            if preprocessing is not None and preprocessing.jpeg_draft and image.format == "JPEG":
                image.draft(None, _draft_target(image, preprocessing))
            image.load()
            # In place: a transposed copy only when the orientation asks for one.
            ImageOps.exif_transpose(image, in_place=True)
            rgb = _to_rgb(image)
            if rgb is image and image.format == "WEBP":
                # Pillow's WebP file keeps libwebp's canvas and the decoded bytes (8 bytes per
                # pixel) for as long as it lives: hand back a plain copy instead.
                rgb = image.copy()
            return rgb
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{name}: {exc}") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{name}: no such file") from exc
    except Image.UnidentifiedImageError as exc:
        other = _other_format(stream, formats)
        if other:
            raise UnsupportedImageError(
                f"{name}: {other} images are not accepted (accepted: {', '.join(formats)})"
            ) from exc
        raise ImageError(f"{name}: not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: cannot decode image ({exc})") from exc


def _other_format(stream: str | Path | BinaryIO, formats: Sequence[str]) -> str | None:
    """The format another Pillow plugin would claim these bytes for, by its prefix check only
    (``_accept`` reads the first bytes; no decoder runs)."""
    try:
        if isinstance(stream, (str, Path)):  # decode_image was given a path
            with open(stream, "rb") as handle:
                prefix = handle.read(16)
        else:
            stream.seek(0)
            prefix = stream.read(16)
    except (OSError, ValueError):
        return None
    Image.init()
    for fmt, (_, accept) in Image.OPEN.items():
        if fmt not in formats and accept is not None:
            try:
                if accept(prefix):
                    return fmt
            except Exception:  # a plugin's prefix check must not turn a 415 into a 500
                continue
    return None
