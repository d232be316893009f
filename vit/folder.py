"""Image-folder discovery: class folders, deterministic splits, and the bad-file report.

Two layouts are understood:

* ``root/train/<class>/…`` with ``root/val/<class>/…`` (and optionally ``root/test/…``);
  without ``val/`` the train folder is split like a flat root;
* a flat ``root/<class>/…``, split deterministically (seeded, stratified) by ``val_fraction``.
"""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from serve.preprocess import DEFAULT_MAX_PIXELS, ImageError, decode_image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_NAMES = ("train", "val", "test")

Sample = tuple[str, int]  # (path, class index)


class DataError(ValueError):
    """The folder cannot be used as a data set; the message names the folder."""


@dataclass
class Splits:
    """Samples per split plus the sorted class names shared by all splits."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def class_counts(self, split: str = "train") -> dict[str, int]:
        counts = Counter(label for _, label in getattr(self, split))
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def scan_class_folders(root: Path) -> dict[str, list[Path]]:
    """``root/<class>/**/image`` -> {class: sorted files}; errors name the offending folder."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} has no class folders: expected {root}/<class>/<image files>")
    files = {d.name: sorted(p for p in d.rglob("*") if is_image_file(p)) for d in class_dirs}
    empty = [str(root / name) for name, paths in files.items() if not paths]
    if empty:
        raise DataError(
            f"class folder(s) with no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): {', '.join(empty)}"
        )
    return files


def stratified_split(
    files: dict[str, list[Path]], classes: list[str], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Per class, a seeded shuffle; the first ``round(n * val_fraction)`` go to validation."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    train: list[Sample] = []
    val: list[Sample] = []
    for index, name in enumerate(classes):
        paths = [str(p) for p in files[name]]
        random.Random(f"{seed}:{name}").shuffle(paths)
        n_val = round(len(paths) * val_fraction)
        n_val = min(max(n_val, 1), len(paths) - 1) if len(paths) >= 2 else 0
        val += [(p, index) for p in paths[:n_val]]
        train += [(p, index) for p in paths[n_val:]]
    return sorted(train), sorted(val)


def _labelled(files: dict[str, list[Path]], classes: list[str]) -> list[Sample]:
    return [(str(p), classes.index(name)) for name in classes for p in files[name]]


def _check_same_classes(reference: list[str], other: dict[str, list[Path]], folder: Path) -> None:
    if sorted(other) != reference:
        missing = sorted(set(reference) - set(other))
        extra = sorted(set(other) - set(reference))
        raise DataError(
            f"classes in {folder} differ from the training classes: "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )


# One folder scan per `vit fit`: the automatic defaults scan with remember=True and the data
# module's scan of the same folder and split takes that result (once) instead of walking again.
_REMEMBERED: dict[tuple[str, float, int], Splits] = {}


def discover(root: str | Path, val_fraction: float = 0.1, seed: int = 0, remember: bool = False) -> Splits:
    """Find classes and split files (no decoding yet; see :func:`find_bad_images`).

    ``remember``: keep the result for the next call with the same folder and split, which takes
    it instead of scanning again (one hand-over, for a scan that is about to be repeated).
    """
    key = (str(Path(root).expanduser().resolve()), float(val_fraction), int(seed))
    if not remember and key in _REMEMBERED:
        return _REMEMBERED.pop(key)
    splits = _discover(Path(root).expanduser(), val_fraction, seed)
    if remember:
        _REMEMBERED[key] = splits
    return splits


def _discover(root: Path, val_fraction: float, seed: int) -> Splits:
    if (root / "train").is_dir():
        train_files = scan_class_folders(root / "train")
        classes = sorted(train_files)
        if (root / "val").is_dir():
            val_files = scan_class_folders(root / "val")
            _check_same_classes(classes, val_files, root / "val")
            train, val = _labelled(train_files, classes), _labelled(val_files, classes)
        else:
            train, val = stratified_split(train_files, classes, val_fraction, seed)
        test: list[Sample] = []
        if (root / "test").is_dir():
            test_files = scan_class_folders(root / "test")
            _check_same_classes(classes, test_files, root / "test")
            test = _labelled(test_files, classes)
        return Splits(classes, train, val, test)
    files = scan_class_folders(root)
    classes = sorted(files)
    train, val = stratified_split(files, classes, val_fraction, seed)
    return Splits(classes, train, val)


GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def probe_headers(paths: list[str], probe: int = 256) -> list[tuple[tuple[int, int], str]]:
    """(size, mode) from the headers of up to ``probe`` evenly spaced files (nothing decoded)."""
    step = max(1, len(paths) // probe)
    found = []
    for path in paths[::step][:probe]:
        try:
            with Image.open(path) as image:
                found.append((image.size, image.mode))
        except Exception:  # noqa: BLE001, S112 - bad files are reported by the image check later
            continue
    return found


def mostly_grey(headers: list[tuple[tuple[int, int], str]]) -> bool:
    """Whether at least 90% of the probed images are single-channel (digits, text, scans, X-rays)."""
    return bool(headers) and sum(mode in GREY_MODES for _, mode in headers) >= 0.9 * len(headers)


def check_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """None when ``path`` decodes completely, else the reason it cannot be used."""
    try:
        with Image.open(path) as probe:
            width, height = probe.size
            if probe.format == "JPEG":
                probe.draft(None, (64, 64))  # decodes every byte at 1/8 scale: truncation still shows
            if width * height > max_pixels:
                return f"{width}x{height} pixels exceeds the limit of {max_pixels}"
            probe.load()
        if path.lower().endswith((".jpg", ".jpeg")):
            return None
        decode_image(path, max_pixels=max_pixels)
    except ImageError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001 - any failure means "skip this file", reported with its reason
        return f"cannot decode image ({type(exc).__name__}: {exc})"
    return None


def find_bad_images(
    paths: list[str], max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 2
) -> list[tuple[str, str]]:
    """Decode every file once (threads: PIL releases the GIL); returns (path, reason) pairs."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(lambda p: check_image(p, max_pixels), paths, chunksize=64))
    return [(path, reason) for path, reason in zip(paths, reasons, strict=True) if reason is not None]


def drop_bad_images(splits: Splits, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 2) -> Splits:
    """Remove undecodable, truncated or oversized files from every split; remember why."""
    every = [p for split in SPLIT_NAMES for p, _ in getattr(splits, split)]
    bad = find_bad_images(every, max_pixels, workers)
    bad_paths = {p for p, _ in bad}
    kept = {s: [x for x in getattr(splits, s) if x[0] not in bad_paths] for s in SPLIT_NAMES}
    return kept_splits(splits, kept, bad)


def kept_splits(splits: Splits, kept: dict[str, list[Sample]], skipped: list[tuple[str, str]]) -> Splits:
    """``splits`` reduced to the ``kept`` samples of each split, remembering the ``skipped`` files;
    a DataError when a train or val split that had files has none left (both loader paths)."""
    for split in ("train", "val"):
        if getattr(splits, split) and not kept[split]:
            raise DataError(f"no readable images left in the {split} split ({len(skipped)} files skipped)")
    return Splits(splits.classes, kept["train"], kept["val"], kept["test"], skipped=skipped)


def format_skip_report(skipped: list[tuple[str, str]], limit: int = 50) -> str:
    lines = [f"skipped {len(skipped)} file(s) that cannot be used:"]
    lines += [f"  {path}: {reason}" for path, reason in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  … and {len(skipped) - limit} more")
    return "\n".join(lines)
