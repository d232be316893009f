"""vit/callbacks.py: the fit-time checkpoint callback keeps ``last.ckpt`` at the latest step."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from vit.callbacks import BestAndLastCheckpoint


class NeverImproves(BoringModel):
    """Validation accuracy is the same every epoch: only the first validation is a new best."""

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/acc1", 0.5)


@pytest.mark.parametrize("save_on_train_epoch_end", [None, False])  # Lightning's two saving points
def test_last_is_the_end_of_training_even_when_validation_stops_improving(
    tmp_path: Path, save_on_train_epoch_end: bool | None
) -> None:
    checkpoints = tmp_path / "checkpoints"
    callback = BestAndLastCheckpoint(
        dirpath=checkpoints, filename="best", monitor="val/acc1", mode="max", save_last=True,
        enable_version_counter=False, save_on_train_epoch_end=save_on_train_epoch_end,
    )  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=3, limit_train_batches=2, limit_val_batches=1, callbacks=[callback], logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(NeverImproves())
    best = torch.load(checkpoints / "best.ckpt", map_location="cpu", weights_only=False)
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] == 2  # the first validation's
    assert last["global_step"] == trainer.global_step == 6  # Lightning alone would leave 2 here
    (key,) = [k for k in last["callbacks"] if "monitor" in k]
    assert key.startswith("ModelCheckpoint{")  # the state key runs saved before this class used
