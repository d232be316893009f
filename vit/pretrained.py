"""Local pretrained weights -> a state dict adapted to the model being trained. Never downloads."""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

# Wrappers that checkpoints commonly put in front of the timm keys.
KEY_PREFIXES = ("ema.module.", "net.", "model.", "module.", "_orig_mod.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, a timm/torch .pth/.pt/.bin, or a Lightning .ckpt."""
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds no state dict")
    # A vit checkpoint carries both net.* and ema.module.*; keep one set, the EMA if present.
    prefix = next((p for p in KEY_PREFIXES if any(k.startswith(p) for k in loaded)), "")
    return {k[len(prefix) :]: v for k, v in loaded.items() if k.startswith(prefix) and torch.is_tensor(v)}


def load_pretrained(model: torch.nn.Module, path: Path) -> str:
    """Load ``path`` into ``model``: position/patch embeddings resized (timm's filter), a head of
    another class count left freshly initialised. Returns a one-line report."""
    state = read_state_dict(Path(path).expanduser())
    if isinstance(model, VisionTransformer):
        state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    reinitialised = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    state = {k: v for k, v in state.items() if k not in reinitialised}
    result = model.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    report = f"pretrained {path}: loaded {loaded} tensors"
    if reinitialised:
        report += f"; re-initialised (shape differs): {', '.join(reinitialised)}"
    if result.missing_keys:
        report += f"; missing, left as initialised: {', '.join(result.missing_keys[:8])}"
    if result.unexpected_keys:
        report += f"; ignored: {', '.join(result.unexpected_keys[:8])}"
    if loaded == 0:
        raise ValueError(f"pretrained {path}: no tensor matches the model; is it a ViT checkpoint?")
    return report
