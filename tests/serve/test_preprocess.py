"""Preprocessing parity: the torch-free pipeline against independent references.

* geometry + normalisation: torchvision's Resize(shorter side, PIL filter) + CenterCrop +
  ToTensor + Normalize, and timm's evaluation transform, to 1e-6 on JPEG/PNG files of varied
  sizes and modes (``jpeg_draft=False``: draft decoding is a deliberate, separately tested change);
* decoding: mode conversions and EXIF orientation against numpy re-implementations;
* JPEG draft mode: used only when the file is at least twice the resize target;
* bounds: the size after the resize is checked before any pixel is decoded, conversions run by
  bands (same pixels, bounded temporaries), and only allow-listed formats reach a plugin.
"""

from __future__ import annotations

import io
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from serve import preprocess
from serve.preprocess import (
    DEFAULT_FORMATS,
    ImageError,
    ImageTooLargeError,
    Preprocessing,
    UnsupportedImageError,
    decode_image,
)

transforms = pytest.importorskip("torchvision.transforms")
timm_data = pytest.importorskip("timm.data")

SIZES = [(400, 300), (120, 420), (37, 53), (32, 32), (21, 19), (257, 256)]  # (width, height)
PREPROCESSINGS = [
    Preprocessing(input_size=(224, 224), crop_pct=0.875, interpolation="bicubic", jpeg_draft=False),
    Preprocessing(input_size=(32, 32), crop_pct=0.875, interpolation="bicubic", jpeg_draft=False),
    Preprocessing(input_size=(32, 32), crop_pct=1.0, interpolation="bilinear", jpeg_draft=False),
    Preprocessing(
        input_size=(48, 48),
        crop_pct=0.9,
        interpolation="lanczos",
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        jpeg_draft=False,
    ),
    Preprocessing(
        input_size=(40, 56), crop_pct=0.95, crop_mode="squash", interpolation="nearest", jpeg_draft=False
    ),
]


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients, a disc and noise: content that JPEG and resampling treat like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 5.0)
    disc = (x - width / 3) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 4) ** 2
    pixels = np.stack([r, g, b], axis=-1)
    pixels[disc] = (250, 30, 60)
    return np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)


def save_variants(folder: Path, width: int, height: int) -> list[Path]:
    """The same picture as JPEG/PNG in modes RGB, L, LA, P, RGBA, CMYK and I;16."""
    rgb = Image.fromarray(photo(width, height, seed=width * height))
    alpha = Image.fromarray(np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    gray16 = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257 + 3).astype(np.uint16))
    la = rgb.convert("L")
    la.putalpha(alpha)
    files = {
        "rgb.jpg": rgb,
        "gray.jpg": rgb.convert("L"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "rgb.png": rgb,
        "rgba.png": rgba,
        "la.png": la,
        "palette.png": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
        "gray16.png": gray16,
    }
    paths = []
    for name, image in files.items():
        path = folder / f"{width}x{height}-{name}"
        image.save(path, quality=90) if name.endswith(".jpg") else image.save(path, compress_level=1)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    return [p for width, height in SIZES for p in save_variants(folder, width, height)]


def torchvision_reference(pp: Preprocessing):
    """Written from the definition (timm's crop_pct rule), not from serve.preprocess."""
    scale = [math.floor(s / pp.crop_pct) for s in pp.input_size]
    size = scale[0] if pp.crop_mode == "center" and scale[0] == scale[1] else tuple(scale)
    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode(pp.interpolation)),
            transforms.CenterCrop(pp.input_size),
            transforms.ToTensor(),
            transforms.Normalize(pp.mean, pp.std),
        ]
    )


def timm_reference(pp: Preprocessing):
    """timm's evaluation transform: what the preprocessing's geometry is defined to follow."""
    return timm_data.create_transform(
        input_size=(3, *pp.input_size),
        is_training=False,
        crop_pct=pp.crop_pct,
        crop_mode=pp.crop_mode,
        interpolation=pp.interpolation,
        mean=pp.mean,
        std=pp.std,
    )


@pytest.mark.parametrize(
    "pp", PREPROCESSINGS, ids=lambda pp: f"{pp.input_size[0]}x{pp.input_size[1]}-{pp.interpolation}"
)
def test_tensor_parity_with_torchvision_and_timm(pp: Preprocessing, image_files: list[Path]) -> None:
    references = [torchvision_reference(pp), timm_reference(pp)]
    for path in image_files:
        image = decode_image(path, preprocessing=pp)
        ours = pp(image)
        assert ours.dtype == np.float32 and ours.shape == (3, *pp.input_size)
        for reference in references:
            expected = reference(image).numpy()
            assert np.abs(ours - expected).max() <= 1e-6, path.name


def raw(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def test_mode_conversions_match_numpy_references(image_files: list[Path]) -> None:
    for path in image_files:
        decoded = np.asarray(decode_image(path), dtype=np.int32)
        source = raw(path)
        assert decoded.shape == (source.height, source.width, 3), path.name
        if source.mode == "RGB":
            expected = np.asarray(source, dtype=np.int32)
        elif source.mode == "L":
            expected = np.repeat(np.asarray(source, dtype=np.int32)[..., None], 3, axis=-1)
        elif source.mode.startswith("I"):  # 16-bit: rescaled to 0..255, not clipped
            values = np.asarray(source, dtype=np.float64)
            expected = np.repeat(np.round(values * 255 / 65535)[..., None], 3, axis=-1)
        elif source.mode == "CMYK":  # (1 - C)(1 - K) in 0..255 units
            c, m, y, k = np.moveaxis(np.asarray(source, dtype=np.float64), -1, 0)
            expected = np.stack([(255 - v) * (255 - k) / 255 for v in (c, m, y)], axis=-1)
        elif source.mode == "P":
            palette = np.array(source.getpalette(), dtype=np.int32).reshape(-1, 3)
            expected = palette[np.asarray(source)]
        else:  # LA / RGBA: alpha composited on white
            values = np.asarray(source.convert("RGBA"), dtype=np.float64)
            a = values[..., 3:] / 255
            expected = values[..., :3] * a + 255 * (1 - a)
        # PIL converts with integer arithmetic: at most one level off an exact float formula
        assert np.abs(decoded - np.asarray(expected)).max() <= 1, f"{path.name} ({source.mode})"


@pytest.mark.parametrize(("orientation", "turns"), [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation(tmp_path: Path, orientation: int, turns: int) -> None:
    path = tmp_path / f"rotated{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(photo(60, 40)).save(path, exif=exif, quality=95)
    stored = np.asarray(raw(path).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(decode_image(path)), np.rot90(stored, k=turns))


@pytest.mark.parametrize(
    ("size", "drafted"),
    [((1024, 768), True), ((684, 512), True), ((683, 511), False), ((500, 400), False), ((256, 256), False)],
)
def test_jpeg_draft_only_from_twice_the_resize_target(
    tmp_path: Path, size: tuple[int, int], drafted: bool
) -> None:
    pp = Preprocessing(input_size=(224, 224), crop_pct=0.875)  # resize target: shorter side 256
    path = tmp_path / "large.jpg"
    Image.fromarray(photo(*size)).save(path, quality=90)
    target = pp.resized_size(*size)
    decoded = decode_image(path, preprocessing=pp)
    assert (decoded.size != size) is drafted
    assert decoded.width >= target[0] and decoded.height >= target[1]  # never below the target
    assert decode_image(path, preprocessing=Preprocessing(jpeg_draft=False)).size == size
    png = tmp_path / "large.png"
    Image.fromarray(photo(*size)).save(png)
    assert decode_image(png, preprocessing=pp).size == size  # only JPEG has a draft mode


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pixel decoding fails the test: the refusal must come from the header alone."""

    def boom(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"{self.format} pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)


@pytest.mark.parametrize("size", [(1, 200_000), (200_000, 1), (1, 40_000_000)])
def test_resize_target_above_the_limit_is_refused_before_decoding(
    size: tuple[int, int], no_decoding: None
) -> None:
    # 40 Mpx and under at the source, but the 224 px centre-crop policy resizes the short side
    # to 256 first: 256 x 51,200,000 (13 Gpx, ~52 GB) for the 1 x 200,000 strip.
    data = encoded(Image.new("1", size))
    pp = Preprocessing(input_size=(224, 224))
    target = pp.resized_size(*size)
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(data, max_pixels=40_000_000, preprocessing=pp)
    message = str(caught.value)
    assert f"{target[0]}x{target[1]} = {target[0] * target[1]} pixels" in message
    assert "limit of 40000000" in message and f"{size[0]}x{size[1]}" in message


def test_the_resize_check_follows_the_policy() -> None:
    strip = encoded(Image.new("L", (1, 2_000), 200))
    centre = Preprocessing(input_size=(32, 32), crop_pct=1.0)  # 1 x 2,000 -> 32 x 64,000
    with pytest.raises(ImageTooLargeError, match="32x64000"):
        decode_image(strip, max_pixels=2_000_000, preprocessing=centre)
    assert decode_image(strip, max_pixels=2_048_000, preprocessing=centre).size == (1, 2_000)
    squash = Preprocessing(input_size=(32, 32), crop_pct=1.0, crop_mode="squash")  # 32 x 32
    assert decode_image(strip, max_pixels=2_000, preprocessing=squash).size == (1, 2_000)
    assert decode_image(strip, max_pixels=2_000).size == (1, 2_000)  # no preprocessing: source only
    with pytest.raises(ImageTooLargeError, match="1x2000 = 2000 pixels exceeds the limit of 1999"):
        decode_image(strip, max_pixels=1_999, preprocessing=squash)


def test_rotated_jpeg_is_drafted_to_its_oriented_target(tmp_path: Path) -> None:
    # Stored 1600 x 800, shown 800 x 1600 (orientation 6); a squash policy to 100 x 400 (w x h)
    # needs at least 100 x 400 after rotation, i.e. 400 x 100 in the stored frame.
    pp = Preprocessing(input_size=(350, 87), crop_pct=0.875, crop_mode="squash")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(photo(1600, 800)).save(path, exif=exif, quality=90)
    decoded = decode_image(path, preprocessing=pp)
    target_w, target_h = pp.resized_size(*decoded.size)
    assert decoded.size == (200, 400)  # drafted 1/4, then rotated
    assert decoded.width >= target_w and decoded.height >= target_h


def wide_files(folder: Path) -> list[Path]:
    """32-bit integer and float TIFFs (the modes rescaled through float64), small and large values."""
    rng = np.random.default_rng(3)
    arrays = {
        "int-wide.tif": rng.integers(-300, 70_000, (700, 1600), dtype=np.int32),
        "int-narrow.tif": rng.integers(0, 250, (700, 1600), dtype=np.int32),
        "float.tif": rng.normal(120, 90, (700, 1600)).astype(np.float32),
    }
    for name, array in arrays.items():
        Image.fromarray(array).save(folder / name, compression="tiff_deflate")
    return [folder / name for name in arrays]


def test_band_by_band_conversion_equals_converting_at_once(
    image_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = image_files + wide_files(tmp_path)
    whole = [np.asarray(decode_image(path)) for path in files]
    monkeypatch.setattr(preprocess, "BAND_PIXELS", 5_000)  # every file above now goes by bands
    for path, expected in zip(files, whole, strict=True):
        np.testing.assert_array_equal(np.asarray(decode_image(path)), expected, err_msg=path.name)


def test_wide_modes_never_widen_the_whole_image_to_float64() -> None:
    # numpy's allocations are visible to tracemalloc: one float64 copy of this image is 48 MB.
    pixels = 2_450 * 2_450
    data = encoded(Image.fromarray(np.full((2_450, 2_450), 40_000, np.uint16)), compress_level=1)
    tracemalloc.start()
    try:
        decoded = decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.getpixel((7, 7)) == (156,) * 3  # round(40000 * 255 / 65535)
    assert peak < 8 * pixels


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nshowpage\n%%EOF\n"


@pytest.fixture
def eps_plugin_trap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening an EPS file with Pillow's plugin fails the test (with gs it would run Ghostscript)."""
    from PIL import EpsImagePlugin

    def trap(self: object) -> None:
        raise AssertionError("the EPS plugin ran")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", trap)


def test_formats_off_the_allow_list_are_refused_before_their_plugin_runs(
    eps_plugin_trap: None, tmp_path: Path
) -> None:
    assert "EPS" not in DEFAULT_FORMATS
    with pytest.raises(UnsupportedImageError, match="EPS images are not accepted"):
        decode_image(EPS)
    path = tmp_path / "drawing.eps"  # the extension makes Pillow import the plugin: still not run
    path.write_bytes(EPS)
    with pytest.raises(UnsupportedImageError, match="drawing.eps: EPS"):
        decode_image(path)
    with pytest.raises(AssertionError, match="the EPS plugin ran"):  # the trap is live
        decode_image(EPS, formats=("EPS",))


def test_the_allow_list_is_a_parameter() -> None:
    jpeg = encoded(Image.new("RGB", (8, 8)), "JPEG")
    assert decode_image(jpeg, formats=("JPEG",)).size == (8, 8)
    with pytest.raises(UnsupportedImageError, match="JPEG images are not accepted .accepted: PNG"):
        decode_image(jpeg, formats=("PNG",))
    with pytest.raises(ImageError, match="not a recognised image format") as caught:
        decode_image(b"plain text, no image")
    assert not isinstance(caught.value, UnsupportedImageError)
