"""Self-attention made visible: per-block attention probabilities and attention rollout.

Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers"): each
block's attention is fused over heads, the identity is added for the residual path, rows are
renormalised, and the blocks are multiplied through: ``R = Â_L … Â_2 Â_1``. Row ``i`` of ``R`` says
how much of token ``i``'s final state traces back to each input token along attention paths.
The map read from it:

* class-token models (``global_pool="token"``): the class token's row over the patch tokens;
* global-pool models (``avg``/``max``/``map``, with or without a class token): the mean of the
  patch tokens' rows, because the head reads all patch tokens, not one token.

Prefix tokens (class, register) are dropped from the columns and every map is renormalised to
sum to 1 over the ``grid_h x grid_w`` patch grid (row-major, as timm's patch embedding flattens).

Two routes compute the same numbers: :func:`attention_maps` + :func:`rollout` read the
probabilities with forward hooks (fused attention switched off only for that call), and
:class:`WithAttention` re-runs the blocks with attention written out explicitly so that
``torch.onnx.export`` records it; :func:`rollout_torch` is the reference the export checks against.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block

HEAD_FUSIONS = ("mean", "max", "min")


@dataclass(frozen=True)
class TokenLayout:
    """Where the patch tokens sit in the sequence and how the map is read out."""

    num_prefix_tokens: int
    grid: tuple[int, int]
    has_class_token: bool  # True: read the class token's row; False: mean of the patch rows


def token_layout(net: torch.nn.Module, image_size: tuple[int, int]) -> TokenLayout:
    """Token layout of a timm VisionTransformer fed images of ``(height, width)``."""
    patch_embed = getattr(net, "patch_embed", None)
    if patch_embed is None or not hasattr(net, "blocks"):
        raise ValueError(f"{type(net).__name__} is not a timm VisionTransformer (no patch_embed/blocks)")
    if hasattr(patch_embed, "dynamic_feat_size"):
        grid = tuple(int(g) for g in patch_embed.dynamic_feat_size(tuple(image_size)))
    else:
        grid = tuple(int(g) for g in patch_embed.grid_size)
    has_cls = getattr(net, "cls_token", None) is not None
    reads_cls = has_cls and getattr(net, "global_pool", "token") == "token"
    return TokenLayout(int(getattr(net, "num_prefix_tokens", int(has_cls))), grid, reads_cls)  # type: ignore[arg-type]


# -- hooks route ---------------------------------------------------------------------------
@contextmanager
def _unfused(net: torch.nn.Module) -> Iterator[list[torch.nn.Module]]:
    """Switch timm's fused (SDPA) attention off for the duration; yields the attention modules."""
    # The blocks' attention only: an attention-pool head (global_pool="map") is not a block.
    candidates = [getattr(b, "attn", None) for b in net.blocks] if hasattr(net, "blocks") else net.modules()
    modules = [m for m in candidates if hasattr(m, "fused_attn") and hasattr(m, "attn_drop")]
    if not modules:
        raise ValueError(f"{type(net).__name__} has no timm attention modules to read")
    saved = [m.fused_attn for m in modules]
    try:
        for m in modules:
            m.fused_attn = False
        yield modules
    finally:
        for m, value in zip(modules, saved, strict=True):
            m.fused_attn = value


def forward_with_attention(net: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, attention [N, layers, heads, tokens, tokens])`` from one ordinary forward.

    Hand-written hooks rather than ``timm.utils.AttentionExtract``: its hook mode leaves the
    hooks installed on the model and its fx mode re-traces the model on every construction.
    """
    captured: list[torch.Tensor] = []
    with _unfused(net) as modules:
        # timm's unfused Attention passes the softmax output through ``attn_drop`` (identity in eval).
        hooks = [m.attn_drop.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in modules]
        try:
            logits = net(images)
        finally:
            for hook in hooks:
                hook.remove()
    if len(captured) != len(modules):
        raise RuntimeError(f"captured {len(captured)} attention maps from {len(modules)} attention modules")
    return logits, torch.stack(captured, dim=1).float()


def attention_maps(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax attention probabilities of every block and head: ``[N, layers, heads, T, T]``."""
    return forward_with_attention(net, images)[1]


# -- rollout maths (shared by both routes) ---------------------------------------------------
def _check_fusion(head_fusion: str, discard_ratio: float) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")


def rollout_step(
    layer_attn: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """One block's ``[N, heads, T, T]`` attention -> its rollout factor ``0.5·A + 0.5·I``, rows summing to 1."""
    attn = layer_attn.float()
    if head_fusion == "mean":
        fused = attn.mean(dim=1)
    elif head_fusion == "max":
        fused = attn.amax(dim=1)
    else:
        fused = attn.amin(dim=1)
    n, t, _ = fused.shape
    k = int(t * t * discard_ratio)
    if k > 0:
        # Drop the weakest k links of the matrix (Gildenblat's variant), never token 0 -> token 0.
        flat = fused.reshape(n, t * t)
        weakest = flat.topk(k, dim=-1, largest=False).indices
        drop = torch.zeros_like(flat).scatter(1, weakest, 1.0)
        keep_first = (torch.arange(t * t, device=flat.device) > 0).to(flat.dtype)
        fused = (flat * (1.0 - drop * keep_first)).reshape(n, t, t)
    eye = torch.eye(t, dtype=fused.dtype, device=fused.device)
    step = 0.5 * fused + 0.5 * eye
    return step / step.sum(dim=-1, keepdim=True)


def read_map(joint: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Joint attention ``[N, T, T]`` (or one layer's ``[N, H, T, T]``) -> maps over the patch grid."""
    p = layout.num_prefix_tokens
    rows = joint[..., 0, p:] if layout.has_class_token else joint[..., p:, p:].mean(dim=-2)
    total = rows.sum(dim=-1, keepdim=True)
    # A read-out that never reached a patch (e.g. identity attention) carries no spatial
    # information: show it as uniform rather than dividing by zero.
    uniform = torch.full_like(rows, 1.0 / rows.shape[-1])
    rows = torch.where(total > 1e-12, rows / total.clamp_min(1e-12), uniform)
    return rows.reshape(*rows.shape[:-1], *layout.grid)


def rollout(
    attn: torch.Tensor,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    has_class_token: bool = True,
) -> torch.Tensor:
    """Attention rollout of ``attn [N, layers, heads, T, T]`` -> ``[N, grid_h, grid_w]``, each summing to 1.

    ``grid`` defaults to a square grid of ``T - num_prefix_tokens`` patches. With
    ``has_class_token=False`` the map is the mean over the patch tokens' rows (global pooling).
    """
    _check_fusion(head_fusion, discard_ratio)
    if attn.dim() != 5 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be [N, layers, heads, T, T], got {tuple(attn.shape)}")
    layout = _layout(attn.shape[-1], num_prefix_tokens, grid, has_class_token)
    joint = torch.eye(attn.shape[-1], dtype=torch.float32, device=attn.device).expand(attn.shape[0], -1, -1)
    for layer in range(attn.shape[1]):
        joint = rollout_step(attn[:, layer], head_fusion, discard_ratio) @ joint
    return read_map(joint, layout)


def last_layer_cls_attention(
    attn: torch.Tensor,
    num_prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    has_class_token: bool = True,
) -> torch.Tensor:
    """The last block's raw attention per head over the patches: ``[N, heads, grid_h, grid_w]``.

    Class-token row (or the mean of the patch rows without one); the share the row gives to
    prefix tokens is dropped and each head's map renormalised to sum to 1.
    """
    layout = _layout(attn.shape[-1], num_prefix_tokens, grid, has_class_token)
    return read_map(attn[:, -1].float(), layout)


def _layout(tokens: int, num_prefix_tokens: int, grid: tuple[int, int] | None, has_cls: bool) -> TokenLayout:
    patches = tokens - num_prefix_tokens
    if grid is None:
        side = int(round(patches**0.5))
        if side * side != patches:
            raise ValueError(f"{patches} patch tokens are not a square grid; pass grid=(h, w)")
        grid = (side, side)
    if grid[0] * grid[1] != patches:
        raise ValueError(f"grid {grid} does not hold the {patches} patch tokens")
    if has_cls and num_prefix_tokens < 1:
        raise ValueError("has_class_token=True needs num_prefix_tokens >= 1")
    return TokenLayout(num_prefix_tokens, (int(grid[0]), int(grid[1])), has_cls)


def rollout_torch(
    net: torch.nn.Module, images: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Reference rollout ``[N, grid_h, grid_w]`` through the hooks route (what export checks against)."""
    layout = token_layout(net, tuple(images.shape[-2:]))
    with torch.inference_mode():
        attn = attention_maps(net, images)
    return rollout(
        attn, head_fusion, discard_ratio, layout.num_prefix_tokens, layout.grid, layout.has_class_token
    )


# -- exportable route ------------------------------------------------------------------------
class WithAttention(torch.nn.Module):
    """``forward(images) -> (logits, rollout [N, grid_h, grid_w] float32)`` for ONNX export.

    Mirrors timm's ``VisionTransformer.forward`` module by module (``patch_embed`` … ``forward_head``)
    with each block's attention written out (``softmax(q·kᵀ·scale)``), so the logits are the net's
    own and the exported graph contains the attention. Supports pre-norm ``Block``s with timm's
    standard ``Attention`` (vit_*, deit_* without distillation, with or without class/register
    tokens, any pooling). ``discard_ratio > 0`` exports as TopK + ScatterElements.
    """

    def __init__(self, net: torch.nn.Module, head_fusion: str = "mean", discard_ratio: float = 0.0) -> None:
        super().__init__()
        _check_fusion(head_fusion, discard_ratio)
        for name in ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm", "forward_head"):
            if not hasattr(net, name):
                raise ValueError(f"{type(net).__name__} is not a timm VisionTransformer (no {name})")
        for i, blk in enumerate(net.blocks):
            if type(blk) is not Block or type(blk.attn) is not Attention:
                raise ValueError(
                    f"block {i} is {type(blk).__name__}/{type(getattr(blk, 'attn', None)).__name__}; "
                    "attention export supports timm's pre-norm Block with the standard Attention"
                )
        self.net = net
        self.head_fusion = head_fusion
        self.discard_ratio = discard_ratio

    @staticmethod
    def _attention(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timm ``Attention.forward`` (unfused branch, no mask) returning the probabilities too."""
        b, n, _ = x.shape
        gate = attn.gate(x).sigmoid() if attn.gate is not None else None
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        probs = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn.attn_drop(probs) @ v).transpose(1, 2).reshape(b, n, attn.attn_dim)
        out = attn.norm(out)
        if gate is not None:
            out = out * gate
        return attn.proj_drop(attn.proj(out)), probs

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        layout = token_layout(net, (int(images.shape[-2]), int(images.shape[-1])))
        x = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(images))))
        joint = None
        for blk in net.blocks:
            y, probs = self._attention(blk.attn, blk.norm1(x))
            x = x + blk.drop_path1(blk.ls1(y))
            x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
            step = rollout_step(probs, self.head_fusion, self.discard_ratio)
            joint = step if joint is None else step @ joint
        logits = net.forward_head(net.norm(x))
        return logits, read_map(joint, layout)
