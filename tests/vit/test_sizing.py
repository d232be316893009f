"""vit.sizing: the model size from measured throughput and the budget; the measuring cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.imagegen import write_class_folder
from vit import autoconfig, sizing
from vit.autoconfig import regularisation_for_epochs, suggest_defaults
from vit.model import ViTClassifier
from vit.sizing import LARGE_IMAGES, SMALL_IMAGES, MeasuredThroughput, Rung, choose, min_epochs


def speeds(scale: float = 1.0, bf16: float = 1.0) -> sizing.Throughput:
    """Injected throughput: each rung of the ladder half as fast as the one before."""

    def throughput(rung: Rung, precision: str) -> float:
        index = [r.name for r in SMALL_IMAGES].index(rung.name)
        base = 1000.0 * scale / 2**index
        return base * (bf16 if precision == "bf16-mixed" else 1.0)

    return throughput


def test_the_choice_is_deterministic_for_given_throughputs() -> None:
    first = choose(SMALL_IMAGES, speeds(), 3600, 50_000)
    second = choose(SMALL_IMAGES, speeds(), 3600, 50_000)
    assert first.rung == second.rung and first.epochs == second.epochs
    # 1000 / 2**i img/s over 0.85 * 3600 s and 50k images: 61.2, 30.6, 15.3 epochs; 20 needed
    assert first.rung.name == "micro"
    assert first.epochs >= min_epochs(50_000) > choose(SMALL_IMAGES[2:], speeds(), 3600, 50_000).epochs


def test_the_size_grows_with_the_budget_and_shrinks_with_slower_machines() -> None:
    order = [r.name for r in SMALL_IMAGES]
    budgets = [60, 300, 900, 1800, 3600, 7200, 28_800]
    by_budget = [order.index(choose(SMALL_IMAGES, speeds(), b, 50_000).rung.name) for b in budgets]
    assert by_budget == sorted(by_budget) and by_budget[0] < by_budget[-1]
    scales = [0.1, 0.5, 1.0, 2.0, 8.0]
    by_speed = [order.index(choose(SMALL_IMAGES, speeds(s), 1800, 50_000).rung.name) for s in scales]
    assert by_speed == sorted(by_speed) and by_speed[0] < by_speed[-1]


def test_the_smallest_rung_is_chosen_when_none_sees_enough_epochs() -> None:
    chosen = choose(SMALL_IMAGES, speeds(0.001), 60, 50_000)
    assert chosen.rung == SMALL_IMAGES[0] and chosen.epochs < chosen.needed_epochs


def test_the_faster_precision_is_kept_and_the_search_stops_at_the_first_miss() -> None:
    asked: list[tuple[str, str]] = []

    def recorded(rung: Rung, precision: str) -> float:
        asked.append((rung.name, precision))
        return speeds(bf16=2.0)(rung, precision)

    chosen = choose(SMALL_IMAGES, recorded, 3600, 50_000, ["32-true", "bf16-mixed"])
    assert chosen.precision == "bf16-mixed" and chosen.rung.name == "mini"  # twice as fast: one rung up
    assert {name for name, _ in asked} == {"nano", "micro", "mini", "small"}
    slow_bf16 = choose(SMALL_IMAGES, speeds(bf16=0.1), 3600, 50_000, ["32-true", "bf16-mixed"])
    assert slow_bf16.precision == "32-true"  # emulated bf16 (AVX2) loses and is not used
    short = []
    choose(SMALL_IMAGES, lambda r, p: short.append(r.name) or speeds()(r, p), 60, 50_000)
    assert short == ["nano"]  # even the nano misses at 60 s: no larger rung is measured


def test_small_folders_need_more_epochs() -> None:
    needs = [min_epochs(n) for n in (500, 2_000, 20_000, 50_000, 1_000_000)]
    assert needs == sorted(needs, reverse=True) and needs[-1] == min_epochs(50_000) == 20.0
    # a 2,000-image folder in 3 minutes at the nano's 600 img/s stays on the nano
    assert choose(SMALL_IMAGES, speeds(0.6), 180, 2_000).rung.name == "nano"


def test_regularisation_follows_the_epochs() -> None:
    rows = [regularisation_for_epochs(e, 40 * e) for e in (2, 10, 25, 40, 80, 200)]
    lows = [r["data.scale"][0] for r in rows]
    drops = [r["model.drop_path_rate"] for r in rows]
    mixups = [r["model.mixup_alpha"] for r in rows]
    assert lows == sorted(lows, reverse=True) and lows[0] == 1.0 and lows[-1] == 0.08
    assert drops == sorted(drops) and drops[0] == 0.0 and drops[-1] == 0.1
    assert mixups == sorted(mixups) and mixups[1] == 0.0 and mixups[-1] == 0.8
    assert "model.ema_decay" not in regularisation_for_epochs(5, 500)  # too few steps to average
    decays = [regularisation_for_epochs(20, s)["model.ema_decay"] for s in (1_000, 8_000, 10**6)]
    assert decays == sorted(decays) and decays[0] >= 0.99 and decays[-1] <= 0.9999


def test_measured_throughput_is_cached_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(sizing, "train_speed", lambda net, *a, **k: calls.append(1) or 123.0)
    cache = tmp_path / "throughput.json"
    speed = MeasuredThroughput(32, 4, 10, 8, cache=cache)
    assert speed(SMALL_IMAGES[0], "32-true") == 123.0
    assert MeasuredThroughput(32, 4, 10, 8, cache=cache)(SMALL_IMAGES[0], "32-true") == 123.0
    assert len(calls) == 1 and speed.seconds > 0
    (key,) = json.loads(cache.read_text())
    assert sizing.machine_key() in key and "32px/4 b8 32-true" in key
    cache.write_text("{not json")  # a damaged cache is measured again, not an error
    assert MeasuredThroughput(32, 4, 10, 8, cache=cache)(SMALL_IMAGES[0], "32-true") == 123.0
    assert len(calls) == 2 and json.loads(cache.read_text())


@pytest.mark.parametrize("rung", [*SMALL_IMAGES, LARGE_IMAGES[0]], ids=lambda r: r.name)
def test_every_rung_trains_a_step(rung: Rung) -> None:
    size, patch = (32, 4) if rung in SMALL_IMAGES else (64, 16)
    assert sizing.train_speed(rung.build(size, patch, 5), size, 4, "32-true", steps=1) > 0


def test_a_budget_sizes_the_automatic_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoconfig, "cpu_has_bf16", lambda: False)
    root = write_class_folder(tmp_path / "d", classes=3, per_class=40, size=(32, 32))
    without = suggest_defaults(root, gpu=False)
    assert "model.size" not in without  # no time limit: nothing to size against
    # ~110 training images: 80 epochs needed (the cap); micro at 25 img/s sees ~118 in 10 minutes
    fast = suggest_defaults(root, gpu=False, budget_seconds=600, throughput=speeds(scale=0.05))
    assert fast["model.size"] == "micro" and fast["trainer.precision"] == "32-true"
    assert fast["_reason"].startswith("model size micro") and fast["_measure_seconds"] == 0.0
    assert fast["model.mixup_alpha"] > 0 and fast["model.drop_path_rate"] == 0.1  # ~80 epochs
    # the small-folder LR (the model's default, measured at width 128) scaled to width 192
    assert fast["model.lr"] == pytest.approx(autoconfig.DEFAULT_LR * (128 / 192) ** 0.5, rel=1e-3)
    assert "trainer.gradient_clip_val" not in fast  # small folders: no clipping, as before
    import inspect

    assert inspect.signature(ViTClassifier).parameters["lr"].default == autoconfig.DEFAULT_LR
    model_args = {k.removeprefix("model."): v for k, v in fast.items() if k.startswith("model.")}
    net = ViTClassifier(num_classes=3, **model_args).net
    assert net.embed_dim == 192 and len(net.blocks) == 3
    # every architecture key of the rung (stem layers, MLP ratio) reaches the trained model
    rung = sizing.rung_named("micro", 32)
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in rung.build(32, 4, 3).parameters()
    )
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)
