"""vit predict: folders, bad files, formats, ONNX/checkpoint parity, metadata-driven preprocessing."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from serve.trust import softmax, top_k
from vit.batches import image_batches
from vit.classifier import load_classifier
from vit.predict import FileResult, format_predictions, main, predict_paths


def test_folder_with_bad_files(tiny_onnx: Path, mixed_folder: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing.jpg"
    code = main([str(tiny_onnx), str(mixed_folder), str(missing), "--format", "csv", "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(Path(r["path"]).name for r in rows) == ["good0.png", "good1.png", "good2.png"]
    for row in rows:
        assert {row["label_1"], row["label_2"]} <= {"c0", "c1", "c2"} and row["label_1"] != row["label_2"]
        assert 1.0 >= float(row["score_1"]) >= float(row["score_2"]) >= 0.0
        assert row["probability_1"] == row["score_1"]  # the deprecated name, kept for one release
        assert float(row["ood_score"]) >= 0.0 and row["unknown"] in ("true", "false")
    assert f"{mixed_folder / 'broken.png'}: not a recognised image format" in err
    assert f"{mixed_folder / 'truncated.png'}: " in err
    assert f"{missing}: no such file" in err
    assert "notes.txt" not in out + err


def test_explicit_non_image_file_is_reported(tiny_onnx: Path, mixed_folder: Path, capsys) -> None:
    assert main([str(tiny_onnx), str(mixed_folder / "notes.txt"), str(mixed_folder / "good0.png")]) == 1
    out, err = capsys.readouterr()
    assert "notes.txt: not a recognised image format" in err and "good0.png" in out


def test_clean_run_and_formats(tiny_onnx: Path, mixed_folder: Path, capsys) -> None:
    good = [str(p) for p in sorted(mixed_folder.rglob("good*.png"))]
    assert main([str(tiny_onnx), *good, "--format", "json", "--top-k", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == good
    for row in rows:
        assert sorted(p["label"] for p in row["predictions"]) == ["c0", "c1", "c2"]
        assert sum(p["score"] for p in row["predictions"]) == pytest.approx(1.0, abs=1e-5)
        assert all(p["probability"] == p["score"] for p in row["predictions"])
        assert isinstance(row["ood_score"], float) and isinstance(row["unknown"], bool)
    assert main([str(tiny_onnx), good[0]]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.split() == ["path", "top-1", "top-2", "top-3", "ood_score", "unknown"]
    assert line.startswith(good[0]) and line.split()[-1] in ("yes", "no")


def test_usage_errors(tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope.onnx"), str(tmp_path)]) == 2
    assert "nope.onnx" in capsys.readouterr().err
    not_a_model = tmp_path / "model.onnx"
    not_a_model.write_bytes(b"garbage")
    assert main([str(not_a_model), str(tmp_path)]) == 2
    assert main([str(tiny_onnx), str(tmp_path), "--top-k", "0"]) == 2
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert main([str(tiny_onnx), str(tmp_path), "--device", "cuda"]) == 2


def test_top_k_and_table() -> None:
    scores = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]])
    assert [[p.index for p in top_k(row, list("abc"), 2)] for row in scores] == [[1, 2], [2, 0]]
    text = format_predictions([FileResult("a.png", ["x", "y"], [0.9, 0.1])], "table", 2)
    assert text.splitlines()[1].split() == ["a.png", "x", "0.900", "y", "0.100", "n/a", "no"]
    unknown = FileResult("b.png", ["x"], [0.6], ood_score=12.5, unknown=True)
    assert format_predictions([unknown], "table", 1).splitlines()[1].split()[-2:] == ["12.5", "yes"]
    row = json.loads(format_predictions([unknown], "json", 1))[0]
    assert row["ood_score"] == 12.5 and row["unknown"] is True
    assert row["predictions"] == [{"label": "x", "score": 0.6, "probability": 0.6}]
    lines = list(csv.DictReader(io.StringIO(format_predictions([unknown], "csv", 1))))
    assert lines[0]["ood_score"] == "12.5" and lines[0]["unknown"] == "true"


def rewrite_metadata(source: Path, target: Path, change) -> Path:
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, change(props))
    onnx.save(model, str(target))
    return target


def test_file_without_trust_metadata_still_works(tiny_onnx: Path, tiny_data: Path, tmp_path: Path) -> None:
    def version_1(props: dict[str, str]) -> dict[str, str]:
        kept = {k: v for k, v in props.items() if k not in ("vit.calibration", "vit.ood", "vit.card")}
        return {**kept, "vit.schema_version": "1"}

    old = rewrite_metadata(tiny_onnx, tmp_path / "v1.onnx", version_1)
    image = [tiny_data / "c0" / "000.png"]
    (row,), _ = predict_paths(load_classifier(old), image, k=3)
    assert row.ood_score is None and row.unknown is False
    classifier = load_classifier(old)
    (batch,) = image_batches(image, classifier.preprocessing)
    logits = classifier.logits(batch.images)
    np.testing.assert_allclose(sorted(row.scores, reverse=True), np.sort(softmax(logits)[0])[::-1], atol=1e-5)


def test_threshold_in_the_file_sets_unknown(tiny_onnx: Path, tiny_data: Path, tmp_path: Path) -> None:
    def strict(props: dict[str, str]) -> dict[str, str]:
        ood = json.loads(props["vit.ood"])
        return {**props, "vit.ood": json.dumps({**ood, "threshold": -1.0})}  # scores are >= 0

    paths = sorted(tiny_data.rglob("*.png"))[:3]
    rows, _ = predict_paths(load_classifier(rewrite_metadata(tiny_onnx, tmp_path / "s.onnx", strict)), paths)
    assert [r.unknown for r in rows] == [True, True, True]
    normal, _ = predict_paths(load_classifier(tiny_onnx), paths)
    assert [r.ood_score for r in rows] == [r.ood_score for r in normal]
