"""The callback that writes checkpoints during ``vit fit`` (reading them is :mod:`vit.checkpoint`)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


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
