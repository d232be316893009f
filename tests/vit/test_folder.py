"""Folder discovery, deterministic stratified splits, and the bad-file report."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.imagegen import write_class_folder
from vit.folder import DataError, discover, drop_bad_images, find_bad_images, format_skip_report


def test_flat_layout_classes_sorted_and_split_stratified(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "d", classes=3, per_class=20)
    splits = discover(root, val_fraction=0.25, seed=1)
    assert splits.classes == ["c0", "c1", "c2"]
    assert Counter(label for _, label in splits.val) == {0: 5, 1: 5, 2: 5}
    assert Counter(label for _, label in splits.train) == {0: 15, 1: 15, 2: 15}
    assert not {p for p, _ in splits.train} & {p for p, _ in splits.val}
    for path, label in splits.train + splits.val:
        assert Path(path).parent.name == splits.classes[label]


def test_split_is_deterministic_and_depends_on_seed(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "d", classes=2, per_class=30)
    first = discover(root, val_fraction=0.2, seed=7)
    again = discover(root, val_fraction=0.2, seed=7)
    other = discover(root, val_fraction=0.2, seed=8)
    assert first.val == again.val
    assert first.val != other.val


def test_train_val_test_layout(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        write_class_folder(tmp_path / split, classes=2, per_class=n, seed=n)
    splits = discover(tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 6)


def test_extensions_are_case_insensitive_and_others_ignored(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "d", classes=2, per_class=3, suffix=".PNG")
    (root / "c0" / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(root / "c1" / "extra.JpEg", format="JPEG")
    splits = discover(root, val_fraction=0.3)
    paths = [p for p, _ in splits.train + splits.val]
    assert len(paths) == 7
    assert not any(p.endswith(".txt") for p in paths)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "d", classes=2, per_class=3)
    (root / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class"):
        discover(root)


def test_root_without_classes_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class folders"):
        discover(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")


def test_val_classes_must_match_train(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "train", classes=3, per_class=2)
    write_class_folder(tmp_path / "val", classes=2, per_class=2)
    with pytest.raises(DataError, match=r"val.*missing \['c2'\]"):
        discover(tmp_path)


def _jpeg_bytes(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    array = np.random.default_rng(0).integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(array.squeeze(), mode).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_bad_files_are_found_with_reasons_and_good_odd_files_kept(tmp_path: Path) -> None:
    folder = tmp_path / "c0"
    folder.mkdir()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"this is not a png at all")
    full = _jpeg_bytes()
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (folder / "good.jpg").write_bytes(full)
    Image.new("L", (20, 20), 128).save(folder / "grey.png")
    Image.new("CMYK", (20, 20), (10, 20, 30, 40)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(folder / "sixteen.png")
    Image.new("RGBA", (20, 20), (1, 2, 3, 0)).save(folder / "alpha.png")
    Image.new("RGB", (300, 300)).save(folder / "huge.png")
    paths = sorted(str(p) for p in folder.iterdir())
    bad = dict(find_bad_images(paths, max_pixels=200 * 200))
    assert set(map(lambda p: Path(p).name, bad)) == {"zero.jpg", "garbage.png", "truncated.jpg", "huge.png"}
    assert "exceeds the limit" in bad[str(folder / "huge.png")]
    assert "truncated" in bad[str(folder / "truncated.jpg")]
    report = format_skip_report(sorted(bad.items()))
    assert report.startswith("skipped 4 file(s)") and "zero.jpg" in report


def test_drop_bad_images_keeps_labels_and_reports(tmp_path: Path) -> None:
    root = write_class_folder(tmp_path / "d", classes=2, per_class=6)
    (root / "c1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    splits = discover(root, val_fraction=0.3)
    cleaned = drop_bad_images(splits)
    assert [Path(p).name for p, _ in cleaned.skipped] == ["broken.png"]
    remaining = cleaned.train + cleaned.val
    assert len(remaining) == 12 and all(not p.endswith("broken.png") for p, _ in remaining)
    assert cleaned.classes == splits.classes


def test_split_with_only_bad_files_is_an_error(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "d" / name).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "d" / name / f"{i}.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="no readable images"):
        drop_bad_images(discover(tmp_path / "d"))
    from serve.preprocess import Preprocessing
    from vit.cache import open_cache

    with pytest.raises(DataError, match="no readable images"):  # the decoded-cache path: the same refusal
        open_cache(
            discover(tmp_path / "d"), Preprocessing(input_size=(8, 8)), True, tmp_path / "cache", side=8
        )
