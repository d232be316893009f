"""Pretrained weights for ``--model.pretrained``: a local file, or a timm/Hugging Face name.

* a local file (timm ``.pth``/``.safetensors``, a ``vit`` ``.ckpt``): read here and adapted to
  the model (head of another class count re-initialised, position embeddings resized);
* ``timm`` (the default pretrained tag of ``model_name``), a timm tag
  (``vit_small_patch16_224.augreg_in21k_ft_in1k``, or ``.augreg_in21k`` after ``model_name``)
  or ``hf-hub:ORG/NAME``: loaded by timm itself (``pretrained=True``), which reads the Hugging
  Face cache and downloads only on a miss, so ``HF_HUB_OFFLINE=1`` works once the weights are
  cached. Offline and not cached: :class:`PretrainedUnavailable`, naming the model, the cache
  folder and the command that pre-downloads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

TIMM_DEFAULT = "timm"  # --model.pretrained timm: the default pretrained tag of model_name
HUB_PREFIX = "hf-hub:"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


class PretrainedUnavailable(RuntimeError):
    """Named pretrained weights that cannot be had here (not cached and no network, or unknown)."""


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


def checkpoint_labels(path: Path) -> list[str] | None:
    """The class names a ``vit`` checkpoint was trained on (None for other files)."""
    if path.suffix != ".ckpt" or not path.is_file():
        return None
    info = torch.load(path, map_location="cpu", weights_only=False).get("vit") or {}
    return list(info.get("labels") or []) or None


def load_pretrained(model: torch.nn.Module, path: Path, class_names: list[str] | None = None) -> str:
    """Load ``path`` into ``model``: position/patch embeddings resized (timm's filter), a head of
    another class count, or of other classes (a vit checkpoint names its classes), left freshly
    initialised. Returns a one-line report."""
    path = Path(path).expanduser()
    state = read_state_dict(path)
    if isinstance(model, VisionTransformer):
        state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    reinitialised = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    labels = checkpoint_labels(path) if class_names else None
    if labels is not None and labels != list(class_names):
        classifier = model.get_classifier()
        prefix = next(name for name, module in model.named_modules() if module is classifier)
        head = {f"{prefix}.{name}" for name, _ in classifier.named_parameters()}
        reinitialised = sorted(set(reinitialised) | (head & set(state)))
    state = {k: v for k, v in state.items() if k not in reinitialised}
    result = model.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    report = f"pretrained {path}: loaded {loaded} tensors"
    if reinitialised:
        report += f"; re-initialised (other classes): {', '.join(reinitialised)}"
    if result.missing_keys:
        report += f"; missing, left as initialised: {', '.join(result.missing_keys[:8])}"
    if result.unexpected_keys:
        report += f"; ignored: {', '.join(result.unexpected_keys[:8])}"
    if loaded == 0:
        raise ValueError(f"pretrained {path}: no tensor matches the model; is it a ViT checkpoint?")
    return report


def is_named(spec: str) -> bool:
    """Whether ``spec`` names weights for timm to load (else it is a local file)."""
    if spec == TIMM_DEFAULT or spec.startswith(HUB_PREFIX):
        return True
    path = Path(spec).expanduser()
    return not path.exists() and not spec.endswith(WEIGHT_SUFFIXES) and "/" not in spec


def timm_name(model_name: str, spec: str) -> str:
    """The name to give ``timm.create_model(..., pretrained=True)`` for ``spec``."""
    if spec == TIMM_DEFAULT:
        return model_name
    if spec.startswith("."):  # a bare tag: the tag of model_name
        return model_name + spec
    return spec


def hub_id(name: str) -> str:
    """The Hugging Face repository timm reads for ``name`` (``timm/<arch>.<tag>`` or ``ORG/NAME``)."""
    if name.startswith(HUB_PREFIX):
        return name[len(HUB_PREFIX) :]
    cfg = registry_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        tags = timm.list_pretrained(f"{name.split('.')[0]}*")
        raise PretrainedUnavailable(
            f"--model.pretrained {name}: timm has no such pretrained weights"
            + (f"; tags of this model: {', '.join(tags[:12])}" if tags else "")
        )
    return cfg.hf_hub_id


def registry_cfg(name: str) -> Any:
    """timm's pretrained config for ``arch.tag`` (or the default tag of ``arch``), None if unknown."""
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # "Invalid pretrained tag"
        return None


def hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def create_pretrained(name: str, **config: Any) -> torch.nn.Module:
    """``timm.create_model(name, pretrained=True, **config)`` with a clear error when the weights
    are neither cached nor downloadable. timm adapts them itself: a head of another class count
    is left initialised, position embeddings are resized for another image size."""
    repository = hub_id(name)
    try:
        return timm.create_model(name, pretrained=True, **config)
    except (OSError, RuntimeError) as exc:  # huggingface_hub's offline/missing errors are OSErrors
        from huggingface_hub.errors import EntryNotFoundError

        if isinstance(exc, RuntimeError) and not isinstance(exc.__cause__, (OSError, EntryNotFoundError)):
            raise
        raise PretrainedUnavailable(
            f"--model.pretrained {name}: the weights ({repository}) are not in the Hugging Face cache "
            f"{hub_cache()} and cannot be downloaded here ({type(exc).__name__}). On a machine with "
            f"internet run `hf download {repository}` (older huggingface_hub: `huggingface-cli download "
            f"{repository}`), then copy that cache folder here or point HF_HUB_CACHE at it."
        ) from exc


def pretrained_preprocessing(cfg: dict[str, Any]) -> dict[str, Any]:
    """``data.*`` keys (mean, std, interpolation, eval_crop_pct) from a timm pretrained config."""
    values = {
        "mean": cfg.get("mean"),
        "std": cfg.get("std"),
        "interpolation": cfg.get("interpolation"),
        "eval_crop_pct": cfg.get("crop_pct"),
    }
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None}


ARCHITECTURE_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def pretrained_settings(spec: str, model_name: str) -> dict[str, Any]:
    """Dotted ``vit fit`` keys that describe the pretrained network and how it was fed.

    Named weights: ``model.model_name`` (the tag's architecture), ``model.img_size`` and the
    ``data.*`` preprocessing of the pretrained config. A ``vit`` checkpoint: its architecture and
    preprocessing. Other files (no architecture inside): nothing.
    """
    if is_named(spec):
        name = timm_name(model_name, spec)
        if name.startswith(HUB_PREFIX):
            try:
                from timm.models._hub import load_model_config_from_hf

                cfg, architecture, _ = load_model_config_from_hf(hub_id(name))
            except (OSError, ValueError):
                return {}
        else:
            found = registry_cfg(name)
            if found is None:
                return {}
            cfg, architecture = found.to_dict(), name.split(".")[0]
        settings: dict[str, Any] = {"model.model_name": architecture}
        if cfg.get("input_size"):
            settings["model.img_size"] = int(cfg["input_size"][-1])
        return {**settings, **{f"data.{k}": v for k, v in pretrained_preprocessing(cfg).items()}}
    path = Path(spec).expanduser()
    if path.suffix != ".ckpt" or not path.is_file():
        return {}
    info = torch.load(path, map_location="cpu", weights_only=False).get("vit") or {}
    if not info:
        return {}
    config = dict(info["model"]["config"])
    settings = {"model.model_name": info["model"]["name"]}
    settings.update({f"model.{k}": config.pop(k) for k in ARCHITECTURE_KEYS if k in config})
    extra = {k: v for k, v in config.items() if k not in ("num_classes", "drop_rate", "drop_path_rate")}
    if extra:
        settings["model.model_kwargs"] = extra
    preprocessing = info.get("preprocessing") or {}
    settings.update(
        {
            f"data.{key}": preprocessing[source]
            for key, source in (
                ("mean", "mean"),
                ("std", "std"),
                ("interpolation", "interpolation"),
                ("eval_crop_pct", "crop_pct"),
            )  # fmt: skip
            if source in preprocessing
        }
    )
    return settings
