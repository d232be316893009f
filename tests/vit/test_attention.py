"""vit.attention: rollout maths on hand-built matrices, both extraction routes, ONNX, and meaning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn.functional as F

from serve.preprocess import decode_image
from tests.imagegen import COLOURS, small_square_image
from vit.attention import (
    WithAttention,
    attention_maps,
    forward_with_attention,
    last_layer_cls_attention,
    rollout,
    rollout_torch,
    token_layout,
)
from vit.checkpoint import load_checkpoint
from vit.model import ViTClassifier


def one_hot_rows(tokens: int, rows: dict[int, int]) -> torch.Tensor:
    """[T, T] identity attention, except row i attends only to token rows[i]."""
    a = torch.eye(tokens)
    for i, j in rows.items():
        a[i] = 0.0
        a[i, j] = 1.0
    return a


def stack(*layers: torch.Tensor, heads: int = 1) -> torch.Tensor:
    """Layers of [T, T] (same for every head) -> [1, L, H, T, T]."""
    return torch.stack([layer.expand(heads, -1, -1) for layer in layers])[None]


# -- rollout on hand-built attention ---------------------------------------------------------
def test_identity_attention_gives_the_uniform_map():
    # Each token only keeps itself: the global-pool read-out (mean of patch rows) is uniform,
    # and the class token never reaches a patch, which is reported as uniform too.
    attn = stack(torch.eye(7), torch.eye(7), heads=2)
    for has_cls in (True, False):
        maps = rollout(attn, num_prefix_tokens=1, grid=(2, 3), has_class_token=has_cls)
        assert maps.shape == (1, 2, 3)
        torch.testing.assert_close(maps, torch.full((1, 2, 3), 1 / 6))


def test_uniform_attention_gives_the_uniform_map():
    attn = stack(torch.full((5, 5), 0.2), torch.full((5, 5), 0.2), torch.full((5, 5), 0.2))
    torch.testing.assert_close(rollout(attn), torch.full((1, 2, 2), 0.25))


def test_attention_to_one_patch_puts_the_mass_there_row_major():
    # cls (token 0) attends only to patch 4 = grid (1, 1) of a 2x3 grid (row-major), in every layer.
    layer = one_hot_rows(7, {0: 5})
    maps = rollout(stack(layer, layer, layer), grid=(2, 3))
    expected = torch.zeros(1, 2, 3)
    expected[0, 1, 1] = 1.0
    torch.testing.assert_close(maps, expected)


def test_layers_multiply_in_order():
    # Block 1: patch b (token 2) attends to patch a (token 1). Block 2: cls attends to b.
    # With the residual halves the class token traces 1/4 to b and 1/4 to a (1/2 to itself):
    # over the patches a = b = 1/2. Multiplying in the wrong order would give b only.
    first = one_hot_rows(5, {2: 1})
    second = one_hot_rows(5, {0: 2})
    maps = rollout(stack(first, second)).flatten()
    torch.testing.assert_close(maps, torch.tensor([0.5, 0.5, 0.0, 0.0]))


@pytest.mark.parametrize(
    ("fusion", "share_a"),
    [("mean", 0.75), ("max", 2 / 3), ("min", 1.0)],
)
def test_head_fusion(fusion, share_a):
    # cls row: head 0 all on patch a (token 1); head 1 half on a, half on b (token 2).
    # mean -> 0.75 a + 0.25 b; max -> (1, 0.5) -> 2/3 a; min -> (0.5, 0) -> a only.
    h0 = one_hot_rows(5, {0: 1})
    h1 = one_hot_rows(5, {})
    h1[0] = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0])
    attn = torch.stack([h0, h1])[None, None]
    maps = rollout(attn, head_fusion=fusion).flatten()
    torch.testing.assert_close(maps, torch.tensor([share_a, 1 - share_a, 0.0, 0.0]))


def test_discard_ratio_drops_the_weak_links():
    # Every row: 0.1 to four tokens, 0.6 to the last patch. Discarding 80% of the 25 links
    # removes exactly the twenty 0.1s (cls -> cls is kept), leaving only the strong patch.
    row = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.6])
    attn = stack(row.expand(5, 5).clone())
    plain = rollout(attn).flatten()
    sharp = rollout(attn, discard_ratio=0.8).flatten()
    assert plain.argmax() == 3 and plain.min() > 0
    torch.testing.assert_close(sharp, torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_global_pool_reads_the_mean_of_patch_rows():
    # No prefix tokens; every patch attends to patch 2. Each row of 0.5·A + 0.5·I has 1/2 on
    # itself and 1/2 on patch 2, so the mean row is 1/8 everywhere plus 1/2 on patch 2.
    attn = stack(one_hot_rows(4, {0: 2, 1: 2, 3: 2}))
    maps = rollout(attn, num_prefix_tokens=0, has_class_token=False).flatten()
    torch.testing.assert_close(maps, torch.tensor([0.125, 0.125, 0.625, 0.125]))


def test_last_layer_cls_attention_is_the_last_block_per_head():
    first = one_hot_rows(5, {0: 1})
    last_h0 = one_hot_rows(5, {0: 3})
    last_h1 = one_hot_rows(5, {0: 4})
    attn = torch.stack([torch.stack([first, first]), torch.stack([last_h0, last_h1])])[None]
    heads = last_layer_cls_attention(attn).reshape(2, 4)
    torch.testing.assert_close(heads, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))


def test_bad_arguments_are_named():
    attn = stack(torch.eye(5))
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(attn, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        rollout(attn, discard_ratio=1.0)
    with pytest.raises(ValueError, match="grid"):
        rollout(attn, grid=(3, 3))
    with pytest.raises(ValueError, match=r"\[N, layers, heads, T, T\]"):
        rollout(attn[0])


# -- both routes on real timm models -----------------------------------------------------------
CONFIGS = {
    "class-token": {},
    "global-pool": {"class_token": False, "global_pool": "avg"},
    "registers": {"reg_tokens": 2, "no_embed_class": True},
    "non-square": {"img_size": (32, 48)},
}


def tiny_vit(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    return timm.create_model("vit_tiny_patch16_224", **{**config, **overrides}).eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hooks_read_probabilities_and_leave_the_model_as_it_was(name):
    net = tiny_vit(**CONFIGS[name])
    x = torch.randn(2, 3, *net.patch_embed.img_size)
    fused_before = [blk.attn.fused_attn for blk in net.blocks]
    with torch.no_grad():
        logits, attn = forward_with_attention(net, x)
        plain = net(x)
    layout = token_layout(net, tuple(x.shape[-2:]))
    tokens = layout.num_prefix_tokens + layout.grid[0] * layout.grid[1]
    assert attn.shape == (2, 2, 2, tokens, tokens)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 2, tokens))
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    assert [blk.attn.fused_attn for blk in net.blocks] == fused_before
    assert not any(blk.attn.attn_drop._forward_hooks for blk in net.blocks)
    assert attention_maps(net, x).shape == attn.shape


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize(("fusion", "discard"), [("mean", 0.0), ("max", 0.3)])
def test_exportable_wrapper_matches_the_model_and_the_hooks(name, fusion, discard):
    net = tiny_vit(**CONFIGS[name])
    x = torch.randn(3, 3, *net.patch_embed.img_size)
    with torch.no_grad():
        logits, maps = WithAttention(net, fusion, discard)(x)
        plain = net(x)
    grid = token_layout(net, tuple(x.shape[-2:])).grid
    assert maps.shape == (3, *grid) and maps.dtype == torch.float32
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(3))
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps, rollout_torch(net, x, fusion, discard), atol=1e-6, rtol=1e-5)


def test_global_pool_and_class_token_read_out_differ():
    assert token_layout(tiny_vit(), (32, 32)).has_class_token
    avg_with_cls = token_layout(tiny_vit(global_pool="avg"), (32, 32))
    assert avg_with_cls.num_prefix_tokens == 1 and not avg_with_cls.has_class_token
    assert token_layout(tiny_vit(img_size=(32, 48)), (32, 48)).grid == (4, 6)


def test_wrapper_refuses_other_architectures():
    net = tiny_vit()
    net.blocks[1].attn = torch.nn.Identity()
    with pytest.raises(ValueError, match="block 1"):
        WithAttention(net)
    with pytest.raises(ValueError, match="not a timm VisionTransformer"):
        WithAttention(torch.nn.Linear(2, 2))


# -- ONNX ---------------------------------------------------------------------------------------
def test_onnx_attention_output_equals_the_pytorch_rollout(
    tiny_attention_onnx: Path, tiny_checkpoint, tiny_data
):
    loaded = load_checkpoint(tiny_checkpoint)
    paths = sorted(tiny_data.rglob("*.png"))[::5][:7]  # a batch size the export never traced
    images = np.stack([loaded.preprocessing(decode_image(p)) for p in paths])
    session = ort.InferenceSession(str(tiny_attention_onnx), providers=["CPUExecutionProvider"])
    # The OOD score the export adds from --check-data comes last (docs/TRUST.md).
    assert [o.name for o in session.get_outputs()][:2] == ["logits", "attention"]
    logits, maps = session.run(["logits", "attention"], {session.get_inputs()[0].name: images})
    reference = rollout_torch(loaded.net, torch.from_numpy(images)).numpy()
    grid = token_layout(loaded.net, loaded.preprocessing.input_size).grid
    assert maps.shape == (len(paths), *grid)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert np.abs(maps - reference).max() <= 1e-4
    with torch.no_grad():
        np.testing.assert_allclose(logits, loaded.net(torch.from_numpy(images)).numpy(), atol=1e-4)


# -- does the map mean anything? ------------------------------------------------------------------
def square_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """32 px noise with a 6 px square whose colour is the class; returns images, labels, patch masks (4 px)."""
    rng = np.random.default_rng(seed)
    images, labels, masks = [], [], []
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    for i in range(n):
        image, (top, left, side) = small_square_image(rng, COLOURS[i % 4], (32, 32), side=6)
        images.append(((np.asarray(image, np.float32) / 255 - mean) / std).transpose(2, 0, 1))
        labels.append(i % 4)
        mask = np.zeros((8, 8), bool)  # every 4 px patch the square touches
        mask[top // 4 : (top + side - 1) // 4 + 1, left // 4 : (left + side - 1) // 4 + 1] = True
        masks.append(mask)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels), np.stack(masks)


def mass_over_share(net: torch.nn.Module, images: torch.Tensor, masks: np.ndarray) -> float:
    """Mean over images of (rollout mass inside the square's patches) / (their share of the grid)."""
    maps = rollout_torch(net.eval(), images).numpy()
    return float(((maps * masks).sum(axis=(1, 2)) / masks.mean(axis=(1, 2))).mean())


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [{}, {"class_token": False, "global_pool": "avg"}], ids=["cls", "gap"])
def test_rollout_points_at_the_evidence(kwargs):
    """Trained on images whose class is only a small square's colour, rollout mass concentrates there."""
    train_x, train_y, _ = square_data(512, seed=0)
    held_x, held_y, held_masks = square_data(64, seed=1)
    torch.manual_seed(0)
    model = ViTClassifier(
        img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0,
        class_names=["c0", "c1", "c2", "c3"], model_kwargs=kwargs,
    )  # fmt: skip
    net = model.net
    untrained = mass_over_share(net, held_x, held_masks)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest without thread hand-offs
    try:
        optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
        generator = torch.Generator().manual_seed(0)
        net.train()
        for _ in range(80):
            batch = torch.randint(0, len(train_x), (32,), generator=generator)
            loss = F.cross_entropy(net(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    with torch.no_grad():
        accuracy = (net(held_x).argmax(1) == held_y).float().mean().item()
    trained = mass_over_share(net, held_x, held_masks)
    assert accuracy >= 0.9, f"the model did not learn the task (held-out accuracy {accuracy:.2f})"
    # The untrained control shows the measure is not satisfied by the images alone.
    assert untrained < 1.5, f"untrained rollout already concentrates on the square ({untrained:.2f}x)"
    assert trained >= 2.0, f"rollout mass on the square is only {trained:.2f}x its area share"
