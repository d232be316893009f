"""Local pretrained weights: head re-initialised for a new class count, position embeddings resized."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

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
