"""Time-budgeted training: the LR schedule is laid out over the budget and survives a resume.

Lightning's ``Timer`` reads ``time.monotonic``; the tests replace that clock with one that moves
exactly one "second" per training batch, so a 12 s budget is exactly 12 steps and the schedule
can be checked step by step without any real timing.
"""

from __future__ import annotations

import math
import types
from pathlib import Path

import lightning.pytorch as pl
import lightning.pytorch.callbacks.timer as timer_module
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.imagegen import write_class_folder
from vit.data import ImageFolderDataModule
from vit.model import ViTClassifier
from vit.schedule import warmup_cosine

LR, MIN_LR_RATIO, WARMUP, BUDGET_S = 1e-3, 0.01, 0.25, 12


class StepClock(pl.Callback):
    """Advances the patched clock by one second at every training batch; records the LR used."""

    def __init__(self, clock: dict[str, float], stop_after: int | None = None) -> None:
        self.clock = clock
        self.stop_after = stop_after
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        self.clock["now"] += 1.0
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if self.stop_after is not None and trainer.global_step >= self.stop_after:
            trainer.should_stop = True  # an interruption after a checkpointable point


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    state = {"now": 1000.0}
    monkeypatch.setattr(timer_module, "time", types.SimpleNamespace(monotonic=lambda: state["now"]))
    return state


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("sched") / "data", per_class=16)


def budget_run(
    data: Path,
    run_dir: Path,
    clock: dict[str, float],
    stop_after: int | None = None,
    budget_s: int = BUDGET_S,
    max_steps: int = -1,
    **kwargs: object,
) -> tuple[pl.Trainer, ViTClassifier, StepClock]:
    dm = ImageFolderDataModule(str(data), img_size=32, batch_size=8, num_workers=0)
    model = ViTClassifier(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, lr=LR, min_lr_ratio=MIN_LR_RATIO,
        class_names=dm.class_names, preprocessing=dm.preprocessing_dict, **{"warmup": WARMUP, **kwargs},
    )  # fmt: skip
    recorder = StepClock(clock, stop_after)
    trainer = pl.Trainer(
        max_time={"seconds": budget_s},
        max_epochs=-1,
        max_steps=max_steps,
        callbacks=[recorder, ModelCheckpoint(dirpath=run_dir, save_last=True)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run_dir,
    )
    return trainer, model, recorder


def test_warmup_cosine_shape() -> None:
    assert warmup_cosine(0.0, WARMUP, MIN_LR_RATIO) < 0.01
    assert warmup_cosine(WARMUP, WARMUP, MIN_LR_RATIO) == pytest.approx(1.0)
    assert warmup_cosine(1.0, WARMUP, MIN_LR_RATIO) == pytest.approx(MIN_LR_RATIO)
    assert warmup_cosine(1.5, WARMUP, MIN_LR_RATIO) == pytest.approx(MIN_LR_RATIO)
    after = [warmup_cosine(p / 100, WARMUP, MIN_LR_RATIO) for p in range(25, 101)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    midway = WARMUP + (1 - WARMUP) / 2
    assert warmup_cosine(midway, WARMUP, MIN_LR_RATIO) == pytest.approx((1 + MIN_LR_RATIO) / 2)


def test_budget_ends_the_run_at_the_final_lr(data: Path, tmp_path: Path, clock: dict[str, float]) -> None:
    trainer, model, recorder = budget_run(data, tmp_path / "run", clock)
    trainer.fit(model, ImageFolderDataModule(str(data), img_size=32, batch_size=8, num_workers=0))
    assert trainer.global_step == BUDGET_S  # stopped by the budget, not by epochs
    # The LR each batch used follows the schedule at the budget fraction spent before it.
    expected = [LR * warmup_cosine(k / BUDGET_S, WARMUP, MIN_LR_RATIO) for k in range(BUDGET_S)]
    assert recorder.lrs == pytest.approx(expected)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR * MIN_LR_RATIO)


def test_resume_continues_the_same_schedule(data: Path, tmp_path: Path, clock: dict[str, float]) -> None:
    def dm() -> ImageFolderDataModule:
        return ImageFolderDataModule(str(data), img_size=32, batch_size=8, num_workers=0)

    trainer, model, whole = budget_run(data, tmp_path / "whole", clock)
    trainer.fit(model, dm())
    trainer, model, first = budget_run(data, tmp_path / "split", clock, stop_after=5)
    trainer.fit(model, dm())
    assert trainer.global_step == 5
    clock["now"] += 500.0  # the pause between the runs is not training time
    trainer, model, second = budget_run(data, tmp_path / "split", clock)
    trainer.fit(model, dm(), ckpt_path=str(tmp_path / "split" / "last.ckpt"))
    assert trainer.global_step == BUDGET_S
    assert first.lrs + second.lrs == pytest.approx(whole.lrs)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR * MIN_LR_RATIO)


def test_mixup_switches_off_at_its_budget_fraction(
    data: Path, tmp_path: Path, clock: dict[str, float]
) -> None:
    trainer, model, recorder = budget_run(
        data, tmp_path / "run", clock, mixup_alpha=0.8, cutmix_alpha=1.0, mixup_off=0.5
    )
    switched: list[float] = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: ViTClassifier, *args: object) -> None:
            if not module.mixup.mixup_enabled and not switched:
                switched.append(module.progress())

    trainer.callbacks.append(Watch())
    trainer.fit(model, ImageFolderDataModule(str(data), img_size=32, batch_size=8, num_workers=0))
    assert switched and math.isclose(switched[0], 0.5, abs_tol=1.0 / BUDGET_S)


def test_budget_option_runs_until_the_budget_not_max_epochs(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vit.cli import main as vit_main

    seen: dict[str, object] = {}

    def fake_fit(self: pl.Trainer, *args: object, **kwargs: object) -> None:
        timers = [c for c in self.callbacks if isinstance(c, timer_module.Timer)]
        seen.update(max_epochs=self.max_epochs, duration=timers[0]._duration if timers else None)

    monkeypatch.setattr(pl.Trainer, "fit", fake_fit)
    vit_main(["fit", "--data.root", str(data), "--model.img_size", "32", "--budget", "1h30m",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert seen == {"max_epochs": -1, "duration": 5400.0}
    vit_main(["fit", "--data.root", str(data), "--model.img_size", "32", "--budget", "90s",
              "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert seen == {"max_epochs": 3, "duration": 90.0}


@pytest.mark.parametrize(
    ("budget_s", "max_steps", "ends_at", "which"), [(12, 30, 12, "time limit"), (100, 8, 8, "8 steps")]
)
def test_with_both_limits_the_schedule_follows_the_earlier_one(
    data: Path, tmp_path: Path, clock: dict[str, float], caplog: pytest.LogCaptureFixture,
    budget_s: int, max_steps: int, ends_at: int, which: str,
) -> None:  # fmt: skip
    trainer, model, recorder = budget_run(data, tmp_path / "run", clock, budget_s=budget_s, max_steps=max_steps,
                                          warmup=0.1)  # fmt: skip
    with caplog.at_level("INFO"):
        trainer.fit(model, ImageFolderDataModule(str(data), img_size=32, batch_size=8, num_workers=0))
    assert trainer.global_step == ends_at
    expected = [LR * warmup_cosine(k / ends_at, 0.1, MIN_LR_RATIO) for k in range(ends_at)]
    assert recorder.lrs == pytest.approx(expected)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(LR * MIN_LR_RATIO)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("schedule:")]
    assert f"laid over {'the ' if which == 'time limit' else ''}{which}" in line and "s/step" in line


def test_layer_decay_gives_each_block_its_lr() -> None:
    model = ViTClassifier(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=3, lr=LR,
                          layer_decay=0.5)  # fmt: skip
    optimizer = model.configure_optimizers()["optimizer"]
    lr_of = {}
    names = {id(p): n for n, p in model.net.named_parameters()}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            lr_of[names[id(parameter)]] = group["initial_lr"]
    # timm's layer ids for 3 blocks: embeddings 0, block i -> i + 1, head and final norm 4.
    assert lr_of["head.weight"] == pytest.approx(LR)
    for block in range(3):
        assert lr_of[f"blocks.{block}.attn.qkv.weight"] == pytest.approx(LR * 0.5 ** (3 - block))
    assert lr_of["patch_embed.proj.weight"] == pytest.approx(LR * 0.5**4)


def test_frozen_backbone_warm_up_trains_only_the_head(
    data: Path, tmp_path: Path, clock: dict[str, float]
) -> None:
    trainer, model, _ = budget_run(data, tmp_path / "run", clock, freeze_backbone=0.5)
    seen: list[tuple[bool, bool]] = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: ViTClassifier, *args: object) -> None:
            seen.append(
                (module.net.blocks[0].attn.qkv.weight.requires_grad, module.net.head.weight.requires_grad)
            )

    start = model.net.blocks[0].attn.qkv.weight.detach().clone()
    trainer.callbacks.append(Watch())
    trainer.fit(model, ImageFolderDataModule(str(data), img_size=32, batch_size=8, num_workers=0))
    frozen = seen.count((False, True))  # the head alone for the first half of the budget, then all
    assert seen == [(False, True)] * frozen + [(True, True)] * (BUDGET_S - frozen)
    assert abs(frozen - BUDGET_S / 2) <= 1
    assert not torch.equal(model.net.blocks[0].attn.qkv.weight, start)  # trained once unfrozen
