"""Convolutional patch stems for small images, registered as timm models.

A ViT's patchify layer (one ``patch x patch`` stride-``patch`` convolution) is hard to optimise
and data-hungry; replacing it with a few 3x3 convolutions (Xiao et al., 2021, "Early
Convolutions Help Transformers See Better"; Hassani et al., 2021, Compact Convolutional
Transformers) trains faster and better on small data at almost no cost. The model stays a timm
``VisionTransformer`` with a custom ``embed_layer``, so checkpoints, attention rollout
(:mod:`vit.attention`) and ONNX export work unchanged; importing this module (done by
:mod:`vit.model`) registers the names below with ``timm.create_model``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from timm.layers import PatchEmbed
from timm.models import build_model_with_cfg, register_model
from timm.models._registry import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn


class ConvPatchEmbed(PatchEmbed):
    """Patch embedding by ``log2(patch_size)`` stride-2 3x3 conv/BN/GELU layers and a 1x1 conv.

    Widths double towards ``embed_dim`` (e.g. 96 -> 192 for ``embed_dim=192, patch_size=4``),
    with an optional stride-1 3x3 layer of ``stem_width`` first when ``stem_width`` is set, and
    ``stage_blocks`` residual 3x3 layers (:class:`ResidualConv`) after each stride-2 layer.
    Same interface and token grid as timm's ``PatchEmbed``; only ``proj`` differs.
    """

    def __init__(
        self,
        img_size: Any = 224,
        patch_size: Any = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        stem_width: int | None = None,
        stage_blocks: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, **kwargs
        )
        patch = self.patch_size[0]
        downs = int(round(math.log2(patch)))
        if self.patch_size[0] != self.patch_size[1] or 2**downs != patch:
            raise ValueError(f"ConvPatchEmbed needs a square power-of-two patch size, got {self.patch_size}")
        layers: list[nn.Module] = []
        channels = in_chans
        if stem_width:
            layers += _conv_bn_gelu(channels, stem_width, stride=1)
            channels = stem_width
        for i in range(downs):
            width = max(16, embed_dim // 2 ** (downs - 1 - i))
            layers += _conv_bn_gelu(channels, width, stride=2)
            layers += [ResidualConv(width) for _ in range(stage_blocks)]
            channels = width
        layers.append(nn.Conv2d(channels, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)


def has_conv_stem(net: nn.Module) -> bool:
    """Whether ``net`` embeds patches with a :class:`ConvPatchEmbed` (a model of this module)."""
    return isinstance(getattr(net, "patch_embed", None), ConvPatchEmbed)


class ResidualConv(nn.Module):
    """``x + GELU(BN(conv3x3(x)))``: a same-width conv layer that deepens a stem stage."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_gelu(channels, channels, stride=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _conv_bn_gelu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj.0",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "vit_convstem_nano_patch4_32": _cfg(),
        "vit_resstem_nano_patch4_32": _cfg(),
        "vit_convstem_tiny_patch8_32": _cfg(),
        "vit_convstem_tiny_patch4_32": _cfg(),
    }
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    """``stem_width`` / ``stage_blocks`` (e.g. via ``model.model_kwargs``) set :class:`ConvPatchEmbed`'s."""
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights; train it with `vit fit`")
    stem_width = kwargs.pop("stem_width", None)
    stage_blocks = kwargs.pop("stage_blocks", None)
    if stem_width or stage_blocks:
        base = kwargs.get("embed_layer", ConvPatchEmbed)
        extra = {"stem_width": int(stem_width)} if stem_width else {}
        if stage_blocks:
            extra["stage_blocks"] = int(stage_blocks)
        kwargs["embed_layer"] = partial(base, **extra)
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained=False,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg={"out_indices": 3, "feature_cls": "getter"},
        **kwargs,
    )


def _small_image_defaults(**overrides: Any) -> dict[str, Any]:
    base = {
        "img_size": 32,
        "patch_size": 4,
        "embed_layer": ConvPatchEmbed,
        "class_token": False,
        "global_pool": "avg",
        "mlp_ratio": 2.0,
    }
    return {**base, **overrides}


@register_model
def vit_convstem_nano_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """A stride-1 3x3 layer (32) and two stride-2 layers (64-128) -> 8x8 tokens at 32 px, 4 blocks of
    width 128 (4 heads), MLP ratio 2, average-pooled: ~0.65M params. The CIFAR-10 recipe's model
    (configs/cifar10.yaml): on 2 CPU cores it learns the most per minute of the stems measured."""
    stem = partial(ConvPatchEmbed, stem_width=32)
    args = _small_image_defaults(patch_size=4, embed_dim=128, depth=4, num_heads=4, embed_layer=stem)
    return _create("vit_convstem_nano_patch4_32", pretrained, **{**args, **kwargs})


@register_model
def vit_resstem_nano_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The nano stem (32 stride 1, 64 and 128 stride 2) with a residual 3x3 layer after each
    stride-2 layer -> 8x8 tokens at 32 px, then 2 blocks of width 128 (4 heads), MLP ratio 2,
    average-pooled: ~0.57M params. The CIFAR-10 recipe's model (configs/cifar10.yaml) and the
    base of vit.sizing's small-image ladder: in short CPU budgets it beat the 4-block nano
    (docs/TRAINING_RECIPES.md): in a few epochs convolutions learn more per image than
    attention blocks of the same cost."""
    stem = partial(ConvPatchEmbed, stem_width=32, stage_blocks=1)
    args = _small_image_defaults(patch_size=4, embed_dim=128, depth=2, num_heads=4, embed_layer=stem)
    return _create("vit_resstem_nano_patch4_32", pretrained, **{**args, **kwargs})


@register_model
def vit_convstem_tiny_patch8_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Three stride-2 conv layers (48-96-192) -> 4x4 tokens at 32 px, 6 blocks of width 192 (3 heads),
    MLP ratio 2, average-pooled: ~2.0M params; the fastest per image of these stems."""
    args = _small_image_defaults(patch_size=8, embed_dim=192, depth=6, num_heads=3)
    return _create("vit_convstem_tiny_patch8_32", pretrained, **{**args, **kwargs})


@register_model
def vit_convstem_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Two stride-2 conv layers (96-192) -> 8x8 tokens at 32 px, 6 blocks of width 192 (3 heads),
    MLP ratio 2, average-pooled: ~2.0M params; 4x the attention tokens of the patch-8 model."""
    args = _small_image_defaults(patch_size=4, embed_dim=192, depth=6, num_heads=3)
    return _create("vit_convstem_tiny_patch4_32", pretrained, **{**args, **kwargs})
