"""Graph optimisation at export: timm's attention in a fusable layout, then onnxruntime's fuser.

onnxruntime's transformer optimizer (``onnxruntime.transformers.optimizer``, model type ``vit``)
fuses each block's attention into one ``com.microsoft.Attention`` node, LayerNorm + residual into
``SkipLayerNormalization`` and bias + GELU into ``BiasGelu``. Its attention pattern is BERT's:
separate Q, K and V projections and ``Softmax(Div(MatMul(q, k)))``; timm computes Q, K and V with
one ``qkv`` Linear, which the fuser does not match. :func:`fusable` therefore rewrites timm's
standard ``Attention`` modules (same weights, same function) into that layout before export.
Blocks that do not have it (qk-norm, gated or custom attention) stay as they are and simply do
not fuse; a fused graph that fails the export self-check is dropped for the unfused one
(:mod:`vit.export`).

Offline optimisation (``SessionOptions.optimized_model_filepath``) is not applied: onnxruntime
repeats the same optimisations when it opens the file, and ``ORT_ENABLE_ALL`` would save CPU-only
NCHWc layout nodes into a file that is meant for any provider (docs/EXPORT.md, measurements).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import onnx
import torch
from timm.layers import Attention
from torch import nn

CONTRIB_DOMAIN = "com.microsoft"  # onnxruntime's contrib operators (CPU and CUDA kernels)
SPLIT_QKV = "split-qkv"  # the applied-optimisation names written into vit.optimizations
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu")


class SeparateQKVAttention(nn.Module):
    """timm ``Attention`` (unfused branch, no mask) with Q, K and V as three Linears.

    Hand-written because no library offers this layout for timm modules; the arithmetic is
    timm's (``softmax(q kᵀ / sqrt(d)) v``), so the exported logits match the original to float
    rounding (the export self-check holds it to 1e-4).
    """

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim = attn.num_heads, attn.head_dim, attn.attn_dim
        weight = attn.qkv.weight.detach()
        bias = attn.qkv.bias.detach() if attn.qkv.bias is not None else torch.zeros(3 * self.attn_dim)
        self.q, self.k, self.v = (nn.Linear(weight.shape[1], self.attn_dim) for _ in range(3))
        for i, linear in enumerate((self.q, self.k, self.v)):
            rows = slice(i * self.attn_dim, (i + 1) * self.attn_dim)
            # The fuser concatenates the three projections back into one QKV weight; a zero bias
            # stands in for qkv_bias=False because its pattern needs the Add.
            linear.weight.data.copy_(weight[rows])
            linear.bias.data.copy_(bias[rows])
        self.proj = attn.proj

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("SeparateQKVAttention exports unmasked self-attention only")
        b, n, _ = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).reshape(b, n, self.num_heads, self.head_dim).permute(0, 2, 3, 1)
        v = self.v(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        probs = ((q @ k) / self.head_dim**0.5).softmax(dim=-1)
        return self.proj((probs @ v).transpose(1, 2).reshape(b, n, self.attn_dim))


def _plain(attn: nn.Module) -> bool:
    """timm's standard Attention without the parts the separate-QKV layout leaves out."""
    return (
        type(attn) is Attention
        and isinstance(attn.q_norm, nn.Identity)
        and isinstance(attn.k_norm, nn.Identity)
        and isinstance(attn.norm, nn.Identity)
        and attn.gate is None
    )


def fusable(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``module`` (a net, or a wrapper around one) whose plain timm attention modules are
    :class:`SeparateQKVAttention`, and how many were rewritten (0: ``module`` itself, unchanged)."""
    if not any(_plain(m) for m in module.modules()):
        return module, 0
    rewritten = copy.deepcopy(module)
    targets = [(name, m) for name, m in rewritten.named_modules() if _plain(m)]
    for name, attn in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(rewritten.get_submodule(parent_name), child, SeparateQKVAttention(attn))
    return rewritten.eval(), len(targets)


def geometry(net: nn.Module) -> tuple[int, int] | None:
    """(num_heads, hidden_size) for the fuser, which cannot detect them in a ViT graph."""
    attn = next((m for m in net.modules() if isinstance(m, Attention)), None)
    if attn is None:
        return None
    return int(attn.num_heads), int(getattr(net, "embed_dim", attn.attn_dim))


def fuse(model: onnx.ModelProto, num_heads: int, hidden_size: int) -> tuple[onnx.ModelProto, list[str]]:
    """onnxruntime's transformer fusions on a copy of ``model``; the names of those that applied."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("vit")
    # Exact GELU stays exact (the approximation would move logits past the 1e-4 check).
    options.enable_gelu_approximation = False
    logger = logging.getLogger("onnxruntime.transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its progress lines are warnings; the report says what fused
    try:
        optimized = optimize_model(
            copy.deepcopy(model),  # optimize_model edits a ModelProto in place
            model_type="vit",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=0,  # the fuser's own passes only: no onnxruntime session optimisation saved
            use_gpu=False,
        )
    finally:
        logger.setLevel(level)
    stats = optimized.get_fused_operator_statistics()
    applied = [f"fused:{op}x{stats[op]}" for op in FUSED_OPS if stats.get(op)]
    fused = optimized.model
    domains = {o.domain for o in fused.opset_import}
    if CONTRIB_DOMAIN not in domains and any(n.domain == CONTRIB_DOMAIN for n in fused.graph.node):
        fused.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))  # the fuser leaves it out
    return fused, applied
