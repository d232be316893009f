"""The `vit` entry point: dispatch, usage, budget parsing, LightningCLI config handling."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def test_automatic_defaults_only_without_config_or_model_settings(tiny_folder: Path) -> None:
    from vit.cli import with_automatic_defaults

    argv = ["fit", "--data.root", str(tiny_folder), "--data.batch_size", "4"]
    chosen = with_automatic_defaults(argv)
    assert chosen[-len(argv) + 1 :] == argv[1:]  # the user's arguments come last and win
    keys = chosen[1 : len(chosen) - len(argv) + 1 : 2]
    assert "--model.img_size" in keys and "--data.batch_size" not in keys
    assert chosen[chosen.index("--model.img_size") + 1] == "32"  # 40x36 images: never upscaled
    for argv in (
        ["fit", "--config", "c.yaml", "--data.root", str(tiny_folder)],
        ["fit", "--data.root", str(tiny_folder), "--model.depth", "2"],
        ["validate", "--data.root", str(tiny_folder)],
    ):
        assert with_automatic_defaults(argv) == argv
