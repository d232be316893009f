"""Warmup + cosine laid out over *progress* (0 -> 1), whether progress counts steps or seconds.

timm's and torch's schedulers are indexed by step or epoch; a time budget needs the schedule
indexed by the fraction of the budget spent, so this small piece is written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
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
    the restored training time, so the schedule continues where it stopped.
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
        super().__init__(optimizer, lambda _step: warmup_cosine(progress_fn(), warmup, min_lr_ratio))

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("progress_fn", None)
        return state
