"""The `vit` entry point: dispatch, usage, budget parsing, LightningCLI config handling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from vit.cli import TOOL_COMMANDS, main, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", "00:00:30:00"), ("1h30m", "00:01:30:00"), ("90s", "00:00:01:30"), ("2d", "02:00:00:00"),
     ("00:02:00:00", "00:02:00:00")],
)  # fmt: skip
def test_parse_duration(text: str, expected: str) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["thirty minutes", "30x", "", "5m garbage"])
def test_parse_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="--budget"):
        parse_duration(text)


def test_usage_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "export" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_every_tool_command_module_has_main() -> None:
    import importlib

    for module_name, _ in TOOL_COMMANDS.values():
        assert callable(importlib.import_module(module_name).main), module_name


@pytest.mark.parametrize("preset", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_parse(preset: Path, tiny_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(preset), "--data.root", str(tiny_folder), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["root"] == str(tiny_folder)
    assert printed["checkpoint"]["monitor"] == "val/acc1"


def test_missing_data_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist"):
        main(["fit", "--data.root", str(tmp_path / "nowhere"), "--trainer.max_epochs", "1"])


def test_automatic_defaults_are_parser_defaults_the_user_overrides(
    tiny_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vit.cli import automatic_defaults

    argv = ["fit", "--data.root", str(tiny_folder), "--data.batch_size", "4"]
    chosen = automatic_defaults(argv)
    assert chosen["model.img_size"] == 32  # 40x36 images: never upscaled
    assert "data.batch_size" not in chosen  # the user set it
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*argv, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])  # after the "defaults" line
    assert printed["model"]["img_size"] == 32 and printed["model"]["model_name"] == chosen["model.model_name"]
    assert printed["data"]["batch_size"] == 4 and printed["data"]["scale"] == chosen["data.scale"]
    for argv in (
        ["fit", "--config", "c.yaml", "--data.root", str(tiny_folder)],
        ["fit", "--data.root", str(tiny_folder), "--model.depth", "2"],
        ["validate", "--data.root", str(tiny_folder)],
    ):
        assert automatic_defaults(argv) == {}


def test_automatic_defaults_fine_tune_when_pretrained_is_given(
    tiny_folder: Path, tiny_checkpoint: Path
) -> None:
    import inspect

    from vit.cli import automatic_defaults
    from vit.model import ViTClassifier

    chosen = automatic_defaults(
        ["fit", "--data.root", str(tiny_folder), "--model.pretrained", str(tiny_checkpoint)]
    )
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)["vit"]
    assert chosen["model.model_name"] == state["model"]["name"]
    assert chosen["model.patch_size"] == state["model"]["config"]["patch_size"] == 8
    assert chosen["model.layer_decay"] < 1 and chosen["model.freeze_backbone"] > 0
    assert chosen["model.lr"] < inspect.signature(ViTClassifier).parameters["lr"].default  # from scratch
    assert chosen["data.mean"] == state["preprocessing"]["mean"]


@pytest.mark.parametrize("time_flag", [["--budget", "90s"], ["--trainer.max_time", "00:00:01:30"],
                                       ["--trainer.max_time", "90s"]])  # fmt: skip
def test_every_time_limit_lifts_the_epoch_limit(
    time_flag: list[str], tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Timer

    seen: dict[str, object] = {}

    def fake_fit(self: pl.Trainer, *args: object, **kwargs: object) -> None:
        timers = [c for c in self.callbacks if isinstance(c, Timer)]
        seen.update(max_epochs=self.max_epochs, duration=timers[0]._duration if timers else None)

    monkeypatch.setattr(pl.Trainer, "fit", fake_fit)
    monkeypatch.setattr("vit.autoconfig.size_for_budget", lambda *a: {})  # sizing: the next test
    main(["fit", "--data.root", str(tiny_folder), *time_flag, "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert seen == {"max_epochs": -1, "duration": 90.0}


def fake_fit_records(monkeypatch: pytest.MonkeyPatch, seen: dict[str, object]) -> None:
    """Trainer.fit records the time limit and the model's architecture instead of training."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Timer

    def fake_fit(self: pl.Trainer, model: pl.LightningModule, *args: object, **kwargs: object) -> None:
        timers = [c for c in self.callbacks if isinstance(c, Timer)]
        seen.update(duration=timers[0]._duration if timers else None, precision=self.precision, embed_dim=model.net.embed_dim,
                    depth=len(model.net.blocks), size=model.hparams.size)  # fmt: skip

    monkeypatch.setattr(pl.Trainer, "fit", fake_fit)


def test_a_budget_sizes_the_model_and_pays_for_the_measuring(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vit import sizing

    seen: dict[str, object] = {}
    fake_fit_records(monkeypatch, seen)
    # Injected speeds: each rung half as fast as the one before; measuring "took" 30 s.
    speeds = {r.name: 4000.0 / 2**i for i, r in enumerate(sizing.SMALL_IMAGES)}
    monkeypatch.setattr(sizing, "train_speed", lambda net, *a, **k: speeds[{128: "nano", 192: "micro",
                        256: "mini", 384: "small"}[net.embed_dim]])  # fmt: skip
    real_init = sizing.MeasuredThroughput.__init__

    def slow_to_measure(self: sizing.MeasuredThroughput, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)
        self.seconds = 30.0

    monkeypatch.setattr(sizing.MeasuredThroughput, "__init__", slow_to_measure)
    main(["fit", "--data.root", str(tiny_folder), "--budget", "10m", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false"])  # fmt: skip
    out = capsys.readouterr().out
    # 33 training images need 80 epochs: at 4000 / 2**i img/s over 0.85 * 570 s, every rung sees them
    assert seen["size"] == "small" and (seen["embed_dim"], seen["depth"]) == (384, 6)
    assert 565.0 <= seen["duration"] <= 570.0  # 600 s less the 30 s (and the models' building)
    assert "s of the budget spent measuring model sizes" in out
    assert "model size small (small-images" in out


def test_a_named_or_automatic_size_with_a_preset(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vit import sizing

    seen: dict[str, object] = {}
    fake_fit_records(monkeypatch, seen)
    base = ["fit", "--config", "configs/small-images.yaml", "--data.root", str(tiny_folder),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]  # fmt: skip
    main([*base, "--model.size", "mini"])
    assert (seen["embed_dim"], seen["depth"], seen["size"]) == (256, 4, "mini")
    monkeypatch.setattr(sizing, "train_speed", lambda net, *a, **k: 1e6 if net.embed_dim == 128 else 1.0)
    main([*base, "--model.size", "auto", "--budget", "5m"])
    assert (seen["embed_dim"], seen["depth"]) == (128, 2)  # only the nano is fast enough
    assert "model size nano" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no size 'huge'.*nano, micro"):
        main([*base, "--model.size", "huge"])


def test_bad_max_time_is_named() -> None:
    with pytest.raises(ValueError, match="--trainer.max_time"):
        parse_duration("soon", "--trainer.max_time")


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_train_a_few_steps(preset: Path, tmp_path: Path) -> None:
    from tests.imagegen import write_class_folder

    data = write_class_folder(tmp_path / "data", classes=3, per_class=6, size=(40, 40))
    run = tmp_path / "run"
    code = main(["fit", "--config", str(preset), "--data.root", str(data), "--trainer.default_root_dir", str(run),
                 "--trainer.max_steps", "2", "--data.batch_size", "4", "--data.num_workers", "0",
                 "--data.cache_dir", str(tmp_path / "cache"), "--trainer.limit_val_batches", "1",
                 "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert code == 0
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert state["vit"]["model"]["name"] == yaml.safe_load(preset.read_text())["model"]["model_name"]


def test_the_automatic_path_scans_the_folder_once(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vit.folder as folder
    from vit.cli import automatic_defaults
    from vit.data import ImageFolderDataModule

    scans: list[Path] = []
    real = folder.scan_class_folders
    monkeypatch.setattr(folder, "scan_class_folders", lambda root: (scans.append(root), real(root))[1])
    automatic_defaults(["fit", "--data.root", str(tiny_folder)])
    data = ImageFolderDataModule(str(tiny_folder), img_size=32)
    assert len(scans) == 1 and len(data.splits.train) == 33
    ImageFolderDataModule(str(tiny_folder), img_size=32)  # the hand-over is used once, then scans again
    assert len(scans) == 2
