"""`vit doctor`: each injected problem is found, a clean folder gives none, report.json, --strict, fit's warning."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.imagegen import write_class_folder
from vit.doctor import KINDS, examine, main

DUPLICATE_KINDS = ("duplicate", "near_duplicate", "leak", "conflict")


def scene(rng: np.random.Generator, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A gradient with a few random shapes: every call a different picture (unlike squares on
    noise, which JPEG turns into near copies of each other)."""
    width, height = size
    ramp = np.linspace(0, 1, width)[None, :, None]
    low, high = rng.integers(0, 256, (2, 3))
    pixels = (low + (high - low) * ramp) * np.ones((height, 1, 1))
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 6))):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        box = (x0, y0, x0 + int(rng.integers(6, width // 2)), y0 + int(rng.integers(6, height // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def write_scene_folder(
    root: Path, classes: int = 3, per_class: int = 16, seed: int = 0, suffix: str = ".png"
) -> Path:
    rng = np.random.default_rng(seed)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            scene(rng).save(root / f"c{k}" / f"{i:03d}{suffix}")
    return root


def write_split_folder(root: Path, per_class: int = 16) -> Path:
    """``root/{train,val}/c<k>/…``: generated scenes, every file a different picture."""
    write_scene_folder(root / "train", per_class=per_class, seed=1)
    write_scene_folder(root / "val", per_class=max(2, per_class // 4), seed=2, suffix=".jpg")
    return root


@pytest.fixture(scope="module")
def injected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[frozenset[str]]]]:
    """A train/val folder with one of each problem; returns it and the expected groups per kind."""
    root = write_split_folder(tmp_path_factory.mktemp("doctor") / "data")
    train = root / "train"
    shutil.copy(train / "c0/000.png", train / "c0/copy.png")  # byte copy within a class
    with Image.open(train / "c1/001.png") as image:  # re-encoded and resized copy
        image.resize((80, 72), Image.Resampling.BICUBIC).save(train / "c1/resized.jpg", quality=85)
    shutil.copy(train / "c2/002.png", root / "val/c2/leaked.png")  # a training image in val
    shutil.copy(train / "c0/003.png", train / "c1/conflict.png")  # the same image in two classes
    data = (train / "c2/004.png").read_bytes()
    (train / "c2/broken.png").write_bytes(data[: len(data) // 2])  # truncated
    (train / "c0/empty.jpg").write_bytes(b"")  # zero bytes
    expected = {
        "duplicate": {frozenset({"train/c0/000.png", "train/c0/copy.png"})},
        "near_duplicate": {frozenset({"train/c1/001.png", "train/c1/resized.jpg"})},
        "leak": {frozenset({"train/c2/002.png", "val/c2/leaked.png"})},
        "conflict": {frozenset({"train/c0/003.png", "train/c1/conflict.png"})},
        "unreadable": {frozenset({"train/c2/broken.png"}), frozenset({"train/c0/empty.jpg"})},
    }
    return root, expected


def groups(report_issues: list, kind: str) -> set[frozenset[str]]:
    return {frozenset(issue.paths) for issue in report_issues if issue.kind == kind}


def test_every_injected_problem_is_found_and_nothing_else(injected) -> None:
    root, expected = injected
    report = examine(root, labels=False)
    for kind, wanted in expected.items():
        assert groups(report.issues, kind) == wanted, kind
    assert "truncated" in report.reasons["train/c2/broken.png"] or report.reasons["train/c2/broken.png"]
    assert report.reasons["train/c0/empty.jpg"]


def test_a_clean_folder_gives_no_duplicates(tmp_path: Path, tiny_folder: Path) -> None:
    root = write_split_folder(tmp_path / "clean", per_class=60)
    write_scene_folder(tmp_path / "flat", classes=4, per_class=40, seed=5, suffix=".jpg")
    for folder in (root, tmp_path / "flat", tiny_folder):
        report = examine(folder, labels=False)
        assert [i for i in report.issues if i.kind in (*DUPLICATE_KINDS, "unreadable")] == []
        assert report.strict_failures() == 0


def test_a_flat_folder_is_checked_for_leaks_across_the_split_fit_makes(tmp_path: Path) -> None:
    from vit.folder import discover

    root = write_class_folder(tmp_path / "flat", classes=2, per_class=20)
    splits = discover(root)
    val_file = Path(splits.val[0][0])
    train_copy = val_file.parent / "copy-of-val.png"
    shutil.copy(val_file, train_copy)
    report = examine(root, labels=False)
    if str(train_copy) in {p for p, _ in discover(root).val}:  # the copy itself landed in val
        pytest.skip("the seeded split put the copy in val too")
    assert any(
        i.kind == "leak" and f"{val_file.parent.name}/copy-of-val.png" in i.paths for i in report.issues
    )
    assert not [i for i in examine(root, labels=False, split="none").issues if i.kind == "leak"]


def test_report_json_schema_and_strict_exit_codes(injected, tmp_path: Path) -> None:
    root, _ = injected
    out = tmp_path / "report"
    assert main([str(root), "-o", str(out), "--no-labels"]) == 0
    assert main([str(root), "-o", str(out), "--no-labels", "--strict"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["root"] == str(root)
    assert report["images"] == len([p for p in root.rglob("*") if p.is_file()])
    assert {"root", "images", "issues"} <= set(report)
    for issue in report["issues"]:
        assert issue["kind"] in KINDS
        assert set(issue) <= {"kind", "paths", "score", "given", "suggested"}
        assert isinstance(issue["score"], float)
        assert ("given" in issue) == ("suggested" in issue) == (issue["kind"] == "label")
        for path in issue["paths"]:
            assert not Path(path).is_absolute() and (root / path).is_file()
    assert (out / "index.html").stat().st_size > 0

    clean = write_split_folder(tmp_path / "clean")
    assert main([str(clean), "-o", str(tmp_path / "clean-report"), "--no-labels", "--strict"]) == 0


def test_json_format_prints_the_report(injected, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, _ = injected
    assert main([str(root), "-o", str(tmp_path / "r"), "--no-labels", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "r/report.json").read_text())


def test_bad_arguments_exit_2_naming_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "missing"), "-o", str(tmp_path / "r")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    assert main([str(tmp_path), "--budget", "soon"]) == 2


def test_flipped_labels_and_an_outlier_are_found(tmp_path: Path) -> None:
    """Colour-coded classes (separable): files moved to a wrong class are found with the right class."""
    root = write_class_folder(tmp_path / "data", classes=3, per_class=40, size=(32, 32))
    moved = {"c0/001.png": "c1", "c1/002.png": "c2", "c2/003.png": "c0"}
    expected = {}
    for source, target in moved.items():
        destination = root / target / f"moved-{Path(source).name}"
        shutil.move(root / source, destination)
        expected[f"{target}/{destination.name}"] = source.split("/")[0]
    report = examine(root, budget=60)
    found = {i.paths[0]: i for i in report.issues if i.kind == "label"}
    assert set(expected) <= set(found)
    assert len(found) <= 2 * len(expected)  # precision: at most as many false as true alarms
    for path, true_class in expected.items():
        assert found[path].suggested == true_class and found[path].given == path.split("/")[0]


def test_fit_start_up_warns_once_with_counts_and_the_command(injected, caplog) -> None:
    from vit.data import ImageFolderDataModule

    root, _ = injected
    caplog.set_level(logging.INFO)
    data = ImageFolderDataModule(str(root), img_size=32, num_workers=0)
    data.setup("fit")
    lines = [r.getMessage() for r in caplog.records if "vit doctor" in r.getMessage()]
    assert len(lines) == 1
    assert "2 unreadable" in lines[0] and "1 exact copy group(s) shared between splits" in lines[0]
    assert "2 exact duplicate(s)" in lines[0]  # the byte copy and the copy under another class
    assert f"vit doctor {root}" in lines[0]


def test_fit_start_up_is_silent_on_a_clean_folder(tmp_path: Path, caplog) -> None:
    from vit.data import ImageFolderDataModule

    caplog.set_level(logging.INFO)
    ImageFolderDataModule(str(write_split_folder(tmp_path / "d")), img_size=32, num_workers=0).setup("fit")
    assert not [r for r in caplog.records if "vit doctor" in r.getMessage()]
