"""End-to-end training through the CLI: loss falls, checkpoints carry what export needs, resume, EMA."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.vit.conftest import TINY_MODEL_ARGS, fit
from vit.checkpoint import load_checkpoint
from vit.model import ViTClassifier


def epoch_losses(run: Path) -> list[float]:
    with open(next(run.glob("logs/version_*/metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    return [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]


def test_fit_loss_falls_and_writes_best_and_last(tiny_data: Path, tiny_checkpoint: Path) -> None:
    run = tiny_checkpoint.parent.parent
    losses = epoch_losses(run)
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    assert state["vit"]["labels"] == ["c0", "c1", "c2"]
    assert state["vit"]["preprocessing"]["input_size"] == [32, 32]
    assert state["vit"]["model"]["config"]["patch_size"] == 8
    assert (next(run.glob("logs/version_*")) / "config.yaml").is_file()
    assert (next(run.glob("logs/version_*")) / "confusion_matrix_val.png").is_file()


def test_load_checkpoint_gives_the_validated_network(tiny_checkpoint: Path) -> None:
    loaded = load_checkpoint(tiny_checkpoint)
    module = ViTClassifier.load_from_checkpoint(tiny_checkpoint, map_location="cpu").eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.net(images), module.eval_net(images), atol=1e-6)
    assert loaded.labels == ["c0", "c1", "c2"]
    assert loaded.preprocessing.input_size == (32, 32)


def test_resume_from_last_continues_step_count(tiny_data: Path, tmp_path: Path) -> None:
    run = fit(tiny_data, tmp_path / "run", "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed")
    first = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    fit(
        tiny_data,
        run,
        "--trainer.max_epochs",
        "2",
        "--trainer.precision",
        "bf16-mixed",
        "--ckpt_path",
        "last",
    )
    second = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] > 0
    assert second["global_step"] == 2 * first["global_step"]
    assert second["epoch"] > first["epoch"]


def test_ema_and_mixup_train_and_export_the_ema_weights(tiny_data: Path, tmp_path: Path) -> None:
    run = fit(
        tiny_data, tmp_path / "run", "--trainer.max_epochs", "1",
        "--model.ema_decay", "0.9", "--model.mixup_alpha", "0.2", "--model.cutmix_alpha", "1.0",
    )  # fmt: skip
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["vit"]["weights"] == "ema"
    net = load_checkpoint(run / "checkpoints" / "last.ckpt").net
    ema_qkv = state["state_dict"]["ema.module.blocks.0.attn.qkv.weight"]
    raw_qkv = state["state_dict"]["net.blocks.0.attn.qkv.weight"]
    assert not torch.equal(ema_qkv, raw_qkv)
    assert torch.equal(net.blocks[0].attn.qkv.weight, ema_qkv)


def test_ddp_with_two_cpu_processes(tiny_data: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "vit", "fit", "--data.root", str(tiny_data)]
    command += ["--trainer.default_root_dir", str(tmp_path / "ddp"), *TINY_MODEL_ARGS]
    command += ["--trainer.max_epochs", "1", "--trainer.strategy", "ddp"]
    command += ["--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr + result.stdout
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # 48 images, 10% val -> 42 train; 2 ranks x batch 16 -> 1 full step per epoch each (drop_last)
    assert state["global_step"] >= 1
    assert state["vit"]["labels"] == ["c0", "c1", "c2"]


def test_model_needs_classes() -> None:
    with pytest.raises(ValueError, match="class_names"):
        ViTClassifier(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)


def test_divergence_stops_training_with_a_clear_error(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError, match="training diverged"):
        fit(
            tiny_data,
            tmp_path / "run",
            "--trainer.max_epochs",
            "2",
            "--model.lr",
            "1e30",
            "--model.warmup",
            "0",
        )


def test_conv_stem_models_train_and_export_in_channels_last(tmp_path: Path) -> None:
    from serve.preprocess import Preprocessing
    from tests.imagegen import write_class_folder
    from vit.export import export_net

    small = dict(img_size=32, embed_dim=32, depth=1, num_heads=2, class_names=["a", "b", "c"], ema_decay=0.9)
    stem = ViTClassifier(model_name="vit_resstem_nano_patch4_32", **small)
    plain = ViTClassifier(model_name="vit_tiny_patch16_224", patch_size=8, **small)
    channels_last = torch.channels_last
    assert stem.channels_last and stem.net.patch_embed.proj[0].weight.is_contiguous(
        memory_format=channels_last
    )
    assert stem.ema.module.patch_embed.proj[0].weight.is_contiguous(memory_format=channels_last)
    assert not plain.channels_last and plain.net.patch_embed.proj.weight.is_contiguous()
    images = torch.randn(2, 3, 32, 32)  # the loaders' default layout
    stem.eval()
    reference = copy.deepcopy(stem.net).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        torch.testing.assert_close(stem(images), reference(images), rtol=1e-4, atol=1e-5)
    data = write_class_folder(tmp_path / "data", classes=3, per_class=2, size=(32, 32))
    report = export_net(
        stem.eval_net,
        tmp_path / "model.onnx",
        labels=stem.class_names,
        preprocessing=Preprocessing(input_size=(32, 32), crop_pct=1.0),
        model_name="vit_resstem_nano_patch4_32",
        model_config=stem.model_config,
        check_data=data,
        log=lambda message: None,
    )
    assert report.ok, report.format()
