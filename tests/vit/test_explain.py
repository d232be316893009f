"""`vit explain`: overlays from checkpoints and attention ONNX files, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from serve.preprocess import decode_image
from tests.vit.conftest import fit
from vit.checkpoint import load_checkpoint
from vit.cli import main as vit_main
from vit.explain import checkpoint_explainer, output_paths


def images_of(data: Path) -> list[Path]:
    """One image of each class; all named 000.png, so the outputs must be told apart."""
    return sorted(data.glob("c*/000.png"))


def test_checkpoint_rollout_writes_one_overlay_per_image(tiny_checkpoint, tiny_data, tmp_path, capsys):
    images = images_of(tiny_data)
    out = tmp_path / "out"
    assert vit_main(["explain", str(tiny_checkpoint), *map(str, images), "-o", str(out)]) == 0
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["000-1_explain.png", "000-2_explain.png", "000_explain.png"]
    printed = capsys.readouterr().out
    labels = load_checkpoint(tiny_checkpoint).labels
    assert all(any(label in line for label in labels) for line in printed.splitlines())
    assert not list(out.glob(".*.tmp"))  # written atomically, no leftovers

    # The top of the figure is the model's view (resized, centre-cropped) as it is, and beside it
    # the same view with the map blended in.
    pre = load_checkpoint(tiny_checkpoint).preprocessing
    figure = Image.open(out / "000_explain.png").convert("RGB")
    view = np.asarray(
        pre.resize_and_crop(decode_image(images[0])).resize((256, 256), Image.Resampling.BICUBIC), np.float32
    )
    original = np.asarray(figure.crop((0, 0, 256, 256)), np.float32)
    overlay = np.asarray(figure.crop((260, 0, 516, 256)), np.float32)
    assert figure.width == 2 * 256 + 4 and figure.height > 256
    assert np.abs(original - view).max() <= 1  # the original, untouched
    assert np.abs(overlay - view).mean() > 2  # the heatmap is there


def test_last_layer_method_and_head_fusion(tiny_checkpoint, tiny_data, tmp_path):
    image = images_of(tiny_data)[0]
    argv = ["explain", str(tiny_checkpoint), str(image), "-o", str(tmp_path)]
    assert vit_main([*argv, "--method", "last-layer", "--head-fusion", "max"]) == 0
    assert (tmp_path / "000_explain.png").is_file()


def test_explainer_maps_and_heads(tiny_checkpoint, tiny_data):
    explainer = checkpoint_explainer(tiny_checkpoint, "rollout", "mean", 0.0)
    pre = explainer.preprocessing
    batch = np.stack([pre(decode_image(p)) for p in images_of(tiny_data)])
    result = explainer.run(batch)
    net = load_checkpoint(tiny_checkpoint).net
    grid = net.patch_embed.grid_size
    assert result.maps.shape == (3, *grid)
    np.testing.assert_allclose(result.maps.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert result.heads.shape == (3, net.blocks[-1].attn.num_heads, *grid)
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert "class token" in explainer.describe


def test_onnx_with_attention(tiny_attention_onnx, tiny_checkpoint, tiny_data, tmp_path, capsys):
    images = images_of(tiny_data)[:2]
    onnx_out, ckpt_out = tmp_path / "onnx", tmp_path / "ckpt"
    assert vit_main(["explain", str(tiny_attention_onnx), *map(str, images), "-o", str(onnx_out)]) == 0
    assert vit_main(["explain", str(tiny_checkpoint), str(images[0]), "-o", str(ckpt_out)]) == 0
    from_onnx = Image.open(onnx_out / "000_explain.png")
    from_ckpt = Image.open(ckpt_out / "000_explain.png")
    # Same picture layout, but only the checkpoint has the per-head grid below the caption.
    assert from_onnx.width == from_ckpt.width and from_onnx.height < from_ckpt.height
    assert "->" in capsys.readouterr().out


def test_onnx_route_does_not_import_torch(tiny_attention_onnx, tiny_data, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from vit.explain import main; "
        f"rc = main([{str(tiny_attention_onnx)!r}, {str(images_of(tiny_data)[0])!r}, '-o', {str(tmp_path)!r}]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path.cwd())
    assert result.returncode == 0, result.stderr


def test_onnx_without_attention_asks_for_a_re_export(tiny_attention_onnx, tiny_data, tmp_path, capsys):
    model = onnx.load(str(tiny_attention_onnx))
    for prop in model.metadata_props:
        if prop.key == "vit.outputs":
            prop.value = json.dumps({"logits": "logits", "attention": None})
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    image = str(images_of(tiny_data)[0])
    assert vit_main(["explain", str(plain), image, "-o", str(tmp_path / "out")]) == 2
    assert "--with-attention" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_onnx_refuses_checkpoint_only_options(tiny_attention_onnx, tiny_data, tmp_path, capsys):
    image = str(images_of(tiny_data)[0])
    base = ["explain", str(tiny_attention_onnx), image, "-o", str(tmp_path)]
    assert vit_main([*base, "--method", "last-layer"]) == 2
    assert "needs a checkpoint" in capsys.readouterr().err
    assert vit_main([*base, "--head-fusion", "max"]) == 2
    assert "fixed when exporting" in capsys.readouterr().err


def test_bad_inputs_are_named(tiny_checkpoint, tiny_data, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    good = images_of(tiny_data)[0]
    out = tmp_path / "out"
    assert vit_main(["explain", str(tiny_checkpoint), str(broken), str(good), "-o", str(out)]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert (out / "000_explain.png").is_file()  # the good image is still explained

    assert vit_main(["explain", str(tmp_path / "missing.ckpt"), str(good), "-o", str(out)]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    not_a_checkpoint = tmp_path / "junk.ckpt"
    not_a_checkpoint.write_bytes(b"junk")
    assert vit_main(["explain", str(not_a_checkpoint), str(good), "-o", str(out)]) == 2
    assert "junk.ckpt" in capsys.readouterr().err
    assert (
        vit_main(["explain", str(tiny_checkpoint), str(good), "-o", str(out), "--discard-ratio", "1.5"]) == 2
    )
    assert "--discard-ratio" in capsys.readouterr().err


def test_output_names_are_unique():
    paths = output_paths([Path("a/x.png"), Path("b/x.jpg"), Path("c/y.png")], Path("out"))
    assert [p.name for p in paths] == ["x_explain.png", "x-1_explain.png", "y_explain.png"]


@pytest.mark.slow
def test_global_pool_checkpoint_without_class_token(tiny_data, tmp_path):
    run = fit(
        tiny_data,
        tmp_path / "run",
        "--model.model_kwargs",
        '{"class_token": false, "global_pool": "avg"}',
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.logger",
        "false",
    )
    checkpoint = run / "checkpoints" / "last.ckpt"
    explainer = checkpoint_explainer(checkpoint, "rollout", "mean", 0.0)
    assert "global pool" in explainer.describe
    image = images_of(tiny_data)[0]
    assert vit_main(["explain", str(checkpoint), str(image), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "000_explain.png").is_file()
