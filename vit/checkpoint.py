"""Read a ``vit fit`` checkpoint into an eval-mode timm model plus what is needed to feed it.

Export, predict, eval and explain start here; they need nothing but the file. The callback that
writes checkpoints during ``vit fit`` is :mod:`vit.callbacks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

from serve.preprocess import Preprocessing
from vit.model import CHECKPOINT_KEY


@dataclass
class LoadedModel:
    net: torch.nn.Module
    labels: list[str]
    preprocessing: Preprocessing
    model_name: str
    model_config: dict[str, Any]
    # checkpoint["vit"] (calibration and training facts from the end of `vit fit`) + run settings
    info: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | Path) -> LoadedModel:
    """The validated weights (EMA when trained with it) of a ``vit fit`` checkpoint, eval mode."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    info = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not info:
        raise ValueError(
            f"{path} is not a vit checkpoint (no '{CHECKPOINT_KEY}' entry); train it with `vit fit`"
        )
    config = dict(info["model"]["config"])
    config["drop_rate"] = config["drop_path_rate"] = 0.0
    net = timm.create_model(info["model"]["name"], pretrained=False, **config)
    prefix = "ema.module." if info.get("weights") == "ema" else "net."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    net.load_state_dict(state)
    net.eval()
    return LoadedModel(
        net=net,
        labels=list(info["labels"]),
        preprocessing=Preprocessing.from_dict(info["preprocessing"]),
        model_name=info["model"]["name"],
        model_config=dict(info["model"]["config"]),
        info={
            **info,
            "hyper_parameters": dict(checkpoint.get("hyper_parameters") or {}),
            "data": dict(checkpoint.get("datamodule_hyper_parameters") or {}),
        },
    )
