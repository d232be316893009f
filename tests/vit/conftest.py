"""Fixtures for the torch side: one tiny trained checkpoint shared by the session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.hubcache import hub_cache  # noqa: F401 (a fixture for every torch-side test)
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


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """ExportReport of :func:`tiny_checkpoint` -> model.onnx (+ int8, fp16, Triton repository),
    self-checked on :func:`tiny_data`."""
    from vit.export import export_model

    out = tmp_path_factory.mktemp("export")
    report = export_model(
        tiny_checkpoint,
        out / "model.onnx",
        check_data=tiny_data,
        quantize="int8",
        fp16=True,
        triton=out / "triton",
    )
    assert report.ok, report.format()
    return report


@pytest.fixture(scope="session")
def tiny_onnx(tiny_export) -> Path:
    """The fp32 ONNX file exported from :func:`tiny_checkpoint` (metadata inside, checked)."""
    return tiny_export.output


@pytest.fixture(scope="session")
def tiny_attention_onnx(
    tiny_checkpoint: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """:func:`tiny_checkpoint` exported ``--with-attention`` (fp32 only), self-checked."""
    from vit.export import export_model

    report = export_model(
        tiny_checkpoint,
        tmp_path_factory.mktemp("attention") / "model.onnx",
        with_attention=True,
        check_data=tiny_data,
    )
    assert report.ok, report.format()
    return report.output


@pytest.fixture
def mixed_folder(tiny_data: Path, tmp_path: Path) -> Path:
    """Three good images (one per class), a corrupt one, a truncated one and a non-image file."""
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    for k in range(3):
        shutil.copyfile(tiny_data / f"c{k}" / "000.png", folder / ("sub" if k else ".") / f"good{k}.png")
    (folder / "broken.png").write_bytes(b"this is not a png")
    data = (tiny_data / "c0" / "001.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own Hugging Face cache or the network (the doctor's
    ``--model auto`` looks there); :func:`tests.hubcache.hub_cache` fills one where a test needs it."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "empty-hf-cache"))
