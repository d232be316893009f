"""serve.render: heatmap overlays and figure layout (numpy + PIL only)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from serve.render import (
    caption,
    colormap,
    explanation_figure,
    normalise_grid,
    overlay_heatmap,
    overlay_pair,
    png_bytes,
    tile,
    upsample,
)


def grey(size: tuple[int, int] = (120, 80)) -> Image.Image:
    return Image.new("RGB", size, (128, 128, 128))


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def test_colormap_is_dark_to_light():
    colours = colormap(np.linspace(0, 1, 50)).astype(np.float32)
    assert colours.shape == (50, 3) and colours.dtype == np.float32
    assert np.all(np.diff(luminance(colours)) > 0)  # perceptual order survives greyscale printing


def test_overlay_keeps_size_and_puts_heat_where_the_grid_is():
    # 2x3 grid on a 120x80 image: each cell is 40x40 px; the hot cell is row 1, column 2.
    grid = np.zeros((2, 3))
    grid[1, 2] = 1.0
    out = overlay_heatmap(grey(), grid, alpha=0.6)
    assert out.mode == "RGB" and out.size == (120, 80)
    pixels = luminance(np.asarray(out, np.float32))
    hot = pixels[60, 100]  # centre of row 1, column 2
    assert hot > pixels[20, 20] + 50 and hot > pixels[20, 100] + 50 and hot > pixels[60, 20] + 50


def test_alpha_ends():
    grid = np.random.default_rng(0).random((4, 4))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(overlay_heatmap(image, grid, alpha=0.0)), np.asarray(image))
    full = np.asarray(overlay_heatmap(image, grid, alpha=1.0)).astype(int)
    values = upsample(grid, image.size)
    hottest = np.unravel_index(values.argmax(), values.shape)
    assert np.abs(full[hottest] - colormap(values)[hottest].astype(int)).max() <= 1  # weight 1 at the peak
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(image, grid, alpha=1.5)


def test_image_stays_readable_where_attention_is_low():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    grid = np.zeros((4, 4))
    grid[0, 0] = 1.0  # attention on the top-left cell only
    out = np.asarray(overlay_heatmap(image, grid, alpha=0.8)).astype(int)
    original = np.asarray(image).astype(int)
    assert np.abs(out[30:, 30:] - original[30:, 30:]).max() <= 1  # far from the hot cell: untouched
    assert np.abs(out[:5, :5] - original[:5, :5]).mean() > 20


def test_pair_shows_the_original_beside_the_overlay():
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    grid = np.random.default_rng(4).random((2, 3))
    pair = overlay_pair(image, grid, alpha=0.5)
    assert pair.size == (30 + 4 + 30, 20)
    assert np.array_equal(np.asarray(pair)[:, :30], np.asarray(image))
    assert np.array_equal(np.asarray(pair)[:, 34:], np.asarray(overlay_heatmap(image, grid, 0.5)))


def test_maps_are_scaled_inside():
    grid = np.array([[0.01, 0.02], [0.03, 0.04]])
    assert np.array_equal(
        np.asarray(overlay_heatmap(grey(), grid)), np.asarray(overlay_heatmap(grey(), grid * 50))
    )
    flat = normalise_grid(np.full((3, 3), 0.7))
    assert np.array_equal(flat, np.zeros((3, 3)))
    smooth = upsample(grid, (64, 64))
    assert smooth.min() >= 0.0 and smooth.max() <= 1.0


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (np.zeros((2, 2, 2)), "2-D"),
        (np.array([[0.0, -1.0]]), "non-negative"),
        (np.array([[0.0, np.nan]]), "NaN"),
    ],
)
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(ValueError, match=message):
        overlay_heatmap(grey(), grid)


def test_caption_wraps_long_lines_to_the_width():
    short = caption(["one line"], 200)
    long = caption(["a much longer caption " * 6], 200)
    assert short.width == long.width == 200 and long.height > short.height


def test_tile_lays_out_rows_and_columns():
    sheet = tile([grey((30, 20))] * 5, [f"h{i}" for i in range(5)], columns=2, pad=4)
    assert sheet.size == (4 + 2 * 34, 4 + 3 * (20 + 16 + 4))


def test_figure_with_heads_is_taller_and_encodes():
    view = grey((40, 40))
    grid = np.eye(4)
    plain = explanation_figure(view, grid, ["c0 90%"], short_side=128)
    with_heads = explanation_figure(
        view, grid, ["c0 90%"], head_grids=np.stack([grid, grid.T]), short_side=128
    )
    assert plain.width == with_heads.width == 2 * 128 + 4 and with_heads.height > plain.height
    assert Image.open(io.BytesIO(png_bytes(with_heads))).size == with_heads.size


def test_render_is_torch_free():
    code = "import sys, serve.render; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
