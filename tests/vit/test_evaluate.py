"""vit eval: ONNX and checkpoint agree, bad files are skipped and listed, reports are written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.imagegen import write_class_folder
from vit.evaluate import main, select_samples
from vit.folder import discover


@pytest.fixture
def data_with_corrupt_file(tiny_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    (root / "c1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def run_eval(model: Path, data: Path, out: Path, *extra: str) -> tuple[int, dict]:
    code = main([str(model), str(data), "--split", "all", "-o", str(out), *extra])
    return code, json.loads((out / "report.json").read_text())


def test_onnx_and_checkpoint_agree(
    tiny_onnx, tiny_checkpoint, data_with_corrupt_file, tmp_path, capsys
) -> None:
    code_onnx, onnx_report = run_eval(tiny_onnx, data_with_corrupt_file, tmp_path / "onnx")
    code_ckpt, ckpt_report = run_eval(tiny_checkpoint, data_with_corrupt_file, tmp_path / "ckpt")
    err = capsys.readouterr().err
    assert code_onnx == code_ckpt == 1  # one file could not be used: said, and the exit code shows it
    assert "corrupt.png" in err
    for report in (onnx_report, ckpt_report):
        assert report["n"] == 48
        assert [s["path"] for s in report["skipped"]] == [str(data_with_corrupt_file / "c1" / "corrupt.png")]
        confusion = np.array(report["confusion_matrix"])
        assert confusion.shape == (3, 3) and confusion.sum() == report["n"]
        assert report["top1"] == pytest.approx(np.trace(confusion) / report["n"])
        assert report["top1"] <= report["top5"] <= 1.0
        assert sum(c["n"] for c in report["per_class"].values()) == report["n"]
    correct = [round(r["top1"] * r["n"]) for r in (onnx_report, ckpt_report)]
    assert abs(correct[0] - correct[1]) <= 1
    for name in ("onnx", "ckpt"):
        with Image.open(tmp_path / name / "confusion_matrix.png") as picture:
            assert picture.format == "PNG" and min(picture.size) > 50


def test_clean_folder_exits_zero(tiny_onnx: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    code, report = run_eval(tiny_onnx, tiny_data, tmp_path / "out")
    assert code == 0 and report["skipped"] == [] and report["split"] == "all"
    assert "top-1" in capsys.readouterr().out


def test_calibration_numbers_and_reliability_diagram(
    tiny_onnx: Path, tiny_data: Path, tmp_path: Path
) -> None:
    code, report = run_eval(tiny_onnx, tiny_data, tmp_path / "out")
    assert code == 0
    calibration = report["calibration"]
    assert report["ece"] == calibration["after"]["ece"] and report["nll"] == calibration["after"]["nll"]
    assert report["ece_uncalibrated"] == calibration["before"]["ece"]
    assert (
        calibration["before"]["top1"] == calibration["after"]["top1"] == report["top1"]
    )  # T changes no answer
    assert calibration["temperature"] > 0 and 0.0 <= report["ece"] <= 1.0 and report["brier"] >= 0.0
    assert "ood_auroc" not in report
    with Image.open(tmp_path / "out" / "reliability.png") as picture:
        assert picture.format == "PNG"


def test_ood_folder_adds_auroc_and_fpr95(tiny_onnx: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    other.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(other / f"noise{i}.png")
    code, report = run_eval(tiny_onnx, tiny_data, tmp_path / "out", "--ood", str(other))
    assert code == 0
    assert 0.0 <= report["ood_auroc"] <= 1.0 and 0.0 <= report["ood_fpr95"] <= 1.0
    assert report["ood"]["n_out"] == 6 and report["ood"]["n_in"] == report["n"]
    assert report["ood"]["method"] == "mahalanobis"
    assert "AUROC" in capsys.readouterr().out
    assert (
        main([str(tiny_onnx), str(tiny_data), "--ood", str(tmp_path / "none"), "-o", str(tmp_path / "x")])
        == 2
    )


def test_split_selection(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "split" / "train", per_class=4)
    write_class_folder(tmp_path / "split" / "val", per_class=2, seed=1)
    labels = ["c2", "c1", "c0"]  # model order differs from folder order: mapped by name
    val = select_samples(tmp_path / "split", "val", labels)
    assert len(val) == 6 and all(f"/val/c{2 - i}/" in p for p, i in val)
    flat = write_class_folder(tmp_path / "flat", per_class=10)
    expected = discover(flat).val  # the split `vit fit` validated on
    assert [p for p, _ in select_samples(flat, "val", ["c0", "c1", "c2"])] == [p for p, _ in expected]
    assert len(select_samples(flat, "all", ["c0", "c1", "c2"])) == 30


def test_data_errors(tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    data = write_class_folder(tmp_path / "data", classes=4, per_class=3)  # c3 is unknown to the model
    assert main([str(tiny_onnx), str(data), "-o", str(tmp_path / "out")]) == 2
    assert "c3" in capsys.readouterr().err
    flat = write_class_folder(tmp_path / "flat", per_class=3)
    assert main([str(tiny_onnx), str(flat), "--split", "test"]) == 2  # a flat folder has no test split
    assert "test split is empty" in capsys.readouterr().err
    assert main([str(tiny_onnx), str(tmp_path / "nowhere")]) == 2
