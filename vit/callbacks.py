"""Callbacks of ``vit fit``: the one that writes checkpoints (reading them is :mod:`vit.checkpoint`)
and the one that reports the run once at its end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from vit.atomic import write_atomic
from vit.report import curves_png, format_per_class_table, read_metrics, write_confusion_matrix_png


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


class RunReport(Callback):
    """At the end of fit, once: the per-class table and confusion matrix of the best validation
    (the one ``best.ckpt`` holds: highest top-1, the earliest of equals, as ModelCheckpoint keeps
    it) and ``curves.png`` (losses and val top-1 against epochs and minutes) in the log folder."""

    def __init__(self) -> None:
        self.best: tuple[float, int, Any] | None = None  # (top-1, epoch, confusion)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        confusion = getattr(pl_module, "last_val_confusion", None)
        if trainer.sanity_checking or confusion is None or trainer.state.fn != TrainerFn.FITTING:
            return
        accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
        if self.best is None or accuracy > self.best[0]:
            self.best = (accuracy, trainer.current_epoch, confusion)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective call under DDP: every rank must ask
        if not trainer.is_global_zero or not log_dir:
            return
        folder = Path(log_dir)
        if self.best is not None:
            accuracy, epoch, confusion = self.best
            names = list(pl_module.class_names)
            title = f"val per-class accuracy of the best validation (epoch {epoch + 1}, top-1 {100 * accuracy:.2f}%)"
            rank_zero_info(format_per_class_table(confusion, names, title=title))
            path = folder / "confusion_matrix_val.png"
            write_confusion_matrix_png(confusion, names, path, title=f"val, epoch {epoch + 1}")
            rank_zero_info(f"confusion matrix: {path}")
        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is not None:
            csv_logger.save()
            metrics = Path(csv_logger.log_dir) / "metrics.csv"
            if metrics.is_file():
                write_atomic(folder / "curves.png", curves_png(read_metrics(metrics)))
                rank_zero_info(f"training curves: {folder / 'curves.png'}")
