"""Local pretrained weights: head re-initialised for a new class count, position embeddings resized."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.hubcache import cached_repository
from vit.model import ViTClassifier
from vit.pretrained import load_pretrained, read_state_dict

SMALL = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


def source_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=3, **SMALL)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_other_class_count_and_image_size(tmp_path: Path, suffix: str) -> None:
    source = source_model()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"model": source.state_dict()}, path)
    module = ViTClassifier(img_size=48, num_classes=5, pretrained=str(path), **SMALL)
    net = module.net
    assert net.head.weight.shape == (5, 32)
    assert net.pos_embed.shape == (1, 1 + 6 * 6, 32)  # 48 / 8 = 6x6 grid (+ class token)
    assert torch.equal(net.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert torch.equal(net.pos_embed[:, 0], source.pos_embed[:, 0])  # class-token slot kept
    assert not torch.equal(net.head.weight[:3], source.head.weight)


def test_vit_checkpoint_as_pretrained_prefers_ema(tiny_checkpoint: Path) -> None:
    state = read_state_dict(tiny_checkpoint)
    assert "blocks.0.attn.qkv.weight" in state and not any(k.startswith("net.") for k in state)
    target = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=7, **SMALL)
    report = load_pretrained(target, tiny_checkpoint)
    assert "re-initialised" in report and "head.weight" in report


def test_unrelated_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pretrained(source_model(), tmp_path / "absent.pth")
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no tensor matches"):
        load_pretrained(source_model(), tmp_path / "other.pth")


# -- named weights through timm, from a Hugging Face cache the test writes (no network) -------
TAG = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
TINY = dict(img_size=32, **SMALL)


def test_timm_tag_loads_from_the_cache_with_a_new_head(hub_cache: Path) -> None:
    source = timm.create_model("vit_tiny_patch16_224", num_classes=1000, **TINY)
    cached_repository(hub_cache, f"timm/{TAG}", source.state_dict())
    for spec in (TAG, "timm", ".augreg_in21k_ft_in1k"):
        module = ViTClassifier(num_classes=5, pretrained=spec, **TINY)
        assert torch.equal(module.net.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight), spec
        assert module.net.head.weight.shape == (5, 32)  # 1000 ImageNet classes -> a new 5-class head
        assert module.architecture == "vit_tiny_patch16_224"


def test_hub_name_loads_its_config_and_weights(hub_cache: Path) -> None:
    source = timm.create_model("vit_tiny_patch16_224", num_classes=3, **TINY)
    config = {"architecture": "vit_tiny_patch16_224", "num_classes": 3,
              "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
                                 "interpolation": "bilinear", "crop_pct": 1.0, "classifier": "head"}}  # fmt: skip
    cached_repository(hub_cache, "someone/tiny-vit", source.state_dict(), config)
    module = ViTClassifier(num_classes=3, pretrained="hf-hub:someone/tiny-vit", **TINY)
    assert torch.equal(module.net.head.weight, source.head.weight)  # same class count: head kept
    assert module.architecture == "vit_tiny_patch16_224"
    from vit.pretrained import pretrained_settings

    settings = pretrained_settings("hf-hub:someone/tiny-vit", "ignored")
    assert settings["data.mean"] == [0.1, 0.2, 0.3] and settings["data.interpolation"] == "bilinear"
    assert settings["model.model_name"] == "vit_tiny_patch16_224" and settings["model.img_size"] == 32


def test_fit_with_a_tag_takes_the_pretrained_preprocessing(
    hub_cache: Path, tiny_data: Path, tmp_path: Path
) -> None:
    from vit.cli import main as vit_main

    source = timm.create_model("vit_tiny_patch16_224", num_classes=1000, **TINY)
    cached_repository(hub_cache, f"timm/{TAG}", source.state_dict())
    run = tmp_path / "run"
    assert vit_main(["fit", "--data.root", str(tiny_data), "--model.pretrained", TAG, "--model.img_size", "32",
                     "--model.patch_size", "8", "--model.embed_dim", "32", "--model.depth", "2",
                     "--model.num_heads", "2", "--data.batch_size", "8", "--data.num_workers", "0",
                     "--trainer.max_steps", "2", "--trainer.default_root_dir", str(run),
                     "--trainer.enable_progress_bar", "false"]) == 0  # fmt: skip
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["vit"]
    cfg = timm.models.get_pretrained_cfg(TAG)
    assert state["preprocessing"]["mean"] == list(cfg.mean) == [0.5, 0.5, 0.5]
    assert state["preprocessing"]["crop_pct"] == cfg.crop_pct == 0.9
    assert state["preprocessing"]["interpolation"] == cfg.interpolation
    assert state["model"]["name"] == "vit_tiny_patch16_224"


def test_offline_and_not_cached_is_a_clear_error_and_writes_nothing(
    hub_cache: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vit.cli import main as vit_main

    run = tmp_path / "run"
    code = vit_main(["fit", "--data.root", str(tiny_data), "--model.pretrained", TAG, "--model.img_size", "32",
                     "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false"])  # fmt: skip
    message = capsys.readouterr().err
    assert code == 2
    assert TAG in message and str(hub_cache) in message and f"hf download timm/{TAG}" in message
    assert not run.exists()


def test_unknown_tag_names_the_known_ones() -> None:
    from vit.pretrained import PretrainedUnavailable

    with pytest.raises(PretrainedUnavailable, match="augreg_in21k_ft_in1k"):
        ViTClassifier(num_classes=3, pretrained="vit_tiny_patch16_224.no_such_tag", **TINY)


def test_vit_checkpoint_of_other_classes_gets_a_new_head(tiny_checkpoint: Path) -> None:
    state = read_state_dict(tiny_checkpoint)
    same = ViTClassifier(
        img_size=32, class_names=["c0", "c1", "c2"], pretrained=str(tiny_checkpoint), **SMALL
    )
    other = ViTClassifier(img_size=32, class_names=["x", "y", "z"], pretrained=str(tiny_checkpoint), **SMALL)
    assert torch.equal(same.net.head.weight, state["head.weight"])  # the same classes: head kept
    assert not torch.equal(other.net.head.weight, state["head.weight"])  # 3 other classes: a new head
    assert torch.equal(other.net.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
