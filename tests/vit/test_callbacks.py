"""vit/callbacks.py: the fit-time checkpoint callback keeps ``last.ckpt`` at the latest step."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
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


def test_fit_reports_the_best_validation_once_with_curves_and_a_labelled_matrix(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv

    import numpy as np
    from PIL import Image

    import vit.callbacks as callbacks
    from tests.vit.conftest import fit

    written: list[str] = []
    real_write = callbacks.write_atomic
    real_matrix = callbacks.write_confusion_matrix_png
    monkeypatch.setattr(callbacks, "write_atomic", lambda path, data: (written.append(Path(path).name),
                                                                       real_write(path, data)))  # fmt: skip
    monkeypatch.setattr(callbacks, "write_confusion_matrix_png", lambda c, n, path, **kw: (
        written.append(Path(path).name), real_matrix(c, n, path, **kw)))  # fmt: skip
    with caplog.at_level("INFO"):
        run = fit(tiny_data, tmp_path / "run", "--trainer.max_epochs", "3")
    console = caplog.text
    assert console.count("per-class accuracy") == 1  # at the end, not after each of 3 validations
    assert sorted(written) == ["confusion_matrix_val.png", "curves.png"]
    logs = next(run.glob("logs/version_*"))
    with open(logs / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/acc1")]
    best = max(float(r["val/acc1"]) for r in rows)
    assert f"top-1 {100 * best:.2f}%" in console  # the best validation's table
    for picture in ("curves.png", "confusion_matrix_val.png"):
        with Image.open(logs / picture) as image:
            assert image.format == "PNG" and min(image.size) > 200
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # drawn, not blank
    assert all(r.get("train/minutes") for r in rows)  # minutes without a time limit too


def test_many_classes_give_a_normalised_matrix() -> None:
    import io

    from PIL import Image

    from vit.report import MANY_CLASSES, confusion_matrix_png

    n = MANY_CLASSES + 5
    confusion = np.eye(n, dtype=np.int64) * 7 + 1
    with Image.open(io.BytesIO(confusion_matrix_png(confusion, [f"class-{i}" for i in range(n)]))) as image:
        assert image.size[0] > 500


def test_known_harmless_messages_are_silenced_and_real_warnings_stay(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    import warnings

    from tests.vit.conftest import fit
    from vit.cli import quiet_known_messages

    with caplog.at_level("INFO"):
        fit(tiny_data, tmp_path / "run", "--trainer.max_epochs", "1", "--model.img_size", "32",
            "--trainer.precision", "bf16-mixed")  # fmt: skip
    console = caplog.text + "\n".join(str(w.message) for w in recwarn)
    for known in ("args parameter", "litlogger", "LeafSpec", "log_every_n_steps", "model summary"):
        assert known not in console, known
    quiet_known_messages()
    with pytest.warns(UserWarning, match="a real problem"):
        warnings.warn("a real problem", UserWarning, stacklevel=1)
