"""Warmup + cosine laid out over *progress* (0 -> 1), whether progress counts steps or seconds.

timm's and torch's schedulers are indexed by step or epoch; a time budget needs the schedule
indexed by the fraction of the budget spent, so this small piece is written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
from lightning.pytorch.callbacks import Timer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(progress: float, warmup: float, min_lr_ratio: float) -> float:
    """LR multiplier at ``progress``: linear warmup over ``warmup``, cosine to ``min_lr_ratio``."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    span = max(1.0 - warmup, 1e-12)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min((progress - warmup) / span, 1.0)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


class ProgressScheduler(LambdaLR):
    """A LambdaLR whose multiplier comes from ``progress_fn()`` rather than its step counter.

    Resuming needs nothing of its own: progress is derived from the restored step count or
    the restored training time, so the schedule continues where it stopped. Groups with
    timm's ``lr_scale`` (layer-wise decay) peak at ``lr * lr_scale``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        progress_fn: Callable[[], float],
        warmup: float = 0.05,
        min_lr_ratio: float = 0.01,
    ) -> None:
        self.progress_fn = progress_fn
        self.warmup = warmup
        self.min_lr_ratio = min_lr_ratio
        for group in optimizer.param_groups:
            # timm's layer decay (create_optimizer_v2(layer_decay=)) marks groups with lr_scale,
            # which only timm's schedulers apply: scale the group's peak LR here, once.
            if "lr_scale" in group and "initial_lr" not in group:
                group["lr"] = group["lr"] * group["lr_scale"]
        super().__init__(optimizer, lambda _step: warmup_cosine(progress_fn(), warmup, min_lr_ratio))

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("progress_fn", None)
        return state


# -- the run's limits: what "progress" counts ------------------------------------------------
def time_limit_s(trainer: Any) -> float | None:
    """Seconds of Lightning's time limit (``max_time``/``--budget``: its ``Timer``), or None."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    return getattr(timer, "_duration", None) or None


def step_limit(trainer: Any) -> float | None:
    """Optimiser steps the step/epoch limits allow (``max_steps``, ``max_epochs``), or None."""
    total = trainer.estimated_stepping_batches
    return float(total) if total and total != float("inf") else None


def run_progress(trainer: Any, step: int) -> float:
    """Fraction of the run done: the larger of steps / step limit and seconds / time limit.

    The larger fraction belongs to the limit that ends the run first at the speed measured so
    far, so the schedule follows that limit and reaches its end (the final LR) when the run
    ends, whichever limit stops it; on a resume both counts are restored from the checkpoint.
    """
    fractions = []
    steps = step_limit(trainer)
    if steps:
        fractions.append(step / max(steps, 1.0))
    seconds = time_limit_s(trainer)
    if seconds:
        timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
        fractions.append(timer.time_elapsed("train") / seconds)
    return min(max(fractions, default=0.0), 1.0)


def describe_limits(trainer: Any, step: int) -> str:
    """One line for the log: which limit the schedule is laid over, with the estimate behind it
    (the speed so far: the Timer's training seconds over ``step``, resumed runs included)."""
    steps, seconds = step_limit(trainer), time_limit_s(trainer)
    if not seconds:
        return f"schedule: laid over {steps:,.0f} steps" if steps else "schedule: no step or time limit"
    limit = f"the time limit {timedelta(seconds=round(seconds))}"
    if not steps:
        return f"schedule: laid over {limit}"
    timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
    per_step = timer.time_elapsed("train") / max(step, 1)
    needed = per_step * steps
    estimate = f"{steps:,.0f} steps take ~{needed / 60:.1f} min at the measured {per_step:.3f} s/step"
    if needed < seconds:
        return f"schedule: laid over {steps:,.0f} steps, which end before {limit} ({estimate})"
    return f"schedule: laid over {limit}, which ends before the step limit ({estimate})"
