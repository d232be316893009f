"""Fixtures for the torch side: one tiny trained checkpoint shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imagegen import write_class_folder
from vit.cli import main as vit_main

TINY_MODEL_ARGS = [
    "--model.img_size",
    "32",
    "--model.patch_size",
    "8",
    "--model.embed_dim",
    "32",
    "--model.depth",
    "2",
    "--model.num_heads",
    "2",
    "--data.batch_size",
    "16",
    "--data.num_workers",
    "0",
    "--trainer.enable_progress_bar",
    "false",
]


def fit(data_root: Path, run_dir: Path, *extra: str) -> Path:
    """Train the tiny model through the real CLI; returns the run folder."""
    vit_main(
        [
            "fit",
            "--data.root",
            str(data_root),
            "--trainer.default_root_dir",
            str(run_dir),
            *TINY_MODEL_ARGS,
            *extra,
        ]
    )
    return run_dir


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_class_folder(tmp_path_factory.mktemp("tiny") / "data", per_class=16)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.ckpt of a 2-block ViT trained for 4 epochs on :func:`tiny_data`."""
    run = fit(tiny_data, tmp_path_factory.mktemp("run"), "--trainer.max_epochs", "4")
    return run / "checkpoints" / "best.ckpt"
