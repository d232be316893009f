"""vit/stems.py: the conv-stem ViTs are timm VisionTransformers with the token grids they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from tests.imagegen import write_class_folder
from vit.stems import ConvPatchEmbed, ResidualConv


def test_conv_stem_models_are_vision_transformers_that_export(tmp_path: Path) -> None:
    from serve.preprocess import Preprocessing
    from vit.export import export_net

    config = {"img_size": 32, "num_classes": 3, "embed_dim": 64, "depth": 2, "num_heads": 2}
    net = timm.create_model("vit_convstem_tiny_patch8_32", **config)
    assert isinstance(net, timm.models.vision_transformer.VisionTransformer)
    assert net.patch_embed.grid_size == (4, 4)
    assert timm.create_model("vit_convstem_tiny_patch4_32", depth=1).patch_embed.grid_size == (8, 8)
    nano = timm.create_model("vit_convstem_nano_patch4_32", depth=1)
    assert nano.patch_embed.grid_size == (8, 8) and nano.patch_embed.proj[0].stride == (1, 1)
    nano64 = timm.create_model("vit_convstem_nano_patch4_32", patch_size=8, img_size=64, depth=1)
    assert nano64.patch_embed.grid_size == (8, 8)
    with pytest.raises(ValueError, match="power-of-two"):
        timm.create_model("vit_convstem_tiny_patch4_32", patch_size=6, img_size=36)
    data = write_class_folder(tmp_path / "data", classes=3, per_class=2, size=(32, 32))
    report = export_net(
        net,
        tmp_path / "model.onnx",
        labels=["c0", "c1", "c2"],
        preprocessing=Preprocessing(input_size=(32, 32), crop_pct=1.0),
        model_name="vit_convstem_tiny_patch8_32",
        model_config=config,
        check_data=data,
        with_attention=True,  # attention rollout exported too: the blocks are timm's
        log=lambda message: None,
    )
    assert report.ok, report.format()


def test_stage_blocks_add_residual_convs_per_stage_and_keep_the_grid() -> None:
    plain = timm.create_model("vit_convstem_nano_patch4_32", depth=1)
    deeper = timm.create_model("vit_convstem_nano_patch4_32", depth=1, stage_blocks=2)
    assert isinstance(deeper.patch_embed, ConvPatchEmbed)
    assert sum(isinstance(m, ResidualConv) for m in plain.modules()) == 0
    assert sum(isinstance(m, ResidualConv) for m in deeper.modules()) == 4  # 2 stride-2 stages x 2
    assert deeper.patch_embed.grid_size == plain.patch_embed.grid_size == (8, 8)
    assert deeper.patch_embed.proj[0].stride == (1, 1)  # the named model's stride-1 layer stays
    images = torch.randn(2, 3, 32, 32)
    assert deeper(images).shape == plain(images).shape


def test_residual_conv_adds_to_its_input() -> None:
    block = ResidualConv(8).eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.zero_()  # conv and BN scale zero: the body outputs GELU(BN shift 0) = 0
        x = torch.randn(1, 8, 4, 4)
        assert torch.equal(block(x), x)
