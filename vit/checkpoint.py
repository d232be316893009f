"""Checkpoints: read one into an eval-mode timm model plus what is needed to feed it (export,
predict, eval and explain start here; they need nothing but the file), and the callback that
writes them during ``vit fit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import timm
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from serve.preprocess import Preprocessing
from vit.model import CHECKPOINT_KEY


@dataclass
class LoadedModel:
    net: torch.nn.Module
    labels: list[str]
    preprocessing: Preprocessing
    model_name: str
    model_config: dict[str, Any]


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
    )


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest weights.

    Lightning 2.6 writes ``last.ckpt`` only together with a new top-k checkpoint, so after a
    validation that did not improve the monitored metric ``last.ckpt`` kept older weights, and
    a run ending on such a validation had no checkpoint of its end of schedule. Here ``last`` is
    also written at every other saving point (validation end, or train epoch end when that is
    where Lightning saves) and when training ends.
    """

    @property
    def state_key(self) -> str:
        # Lightning files callback state under the class name: keep ModelCheckpoint's, so runs
        # saved before this class resume with their best score and readers find it as before.
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):  # this callback's saving point
            self._save_last_if_behind(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # or else best is not saved yet
            self._save_last_if_behind(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: pl.Trainer) -> None:
        # Skipped when this step is already saved, outside fit, in sanity checks and fast_dev_run.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
