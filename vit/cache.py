"""Decoded-image cache: every image decoded and resized once, kept as a memory-mapped uint8 array.

On a small machine, decoding JPEGs and resizing them every epoch competes with the model for
the CPU. Here each split is decoded once into ``<cache_dir>/<key>.npy`` (N x H x W x 3 uint8,
opened with ``mmap_mode="r"``), and the random crop/flip/normalisation is applied to whole uint8
batches afterwards (:mod:`vit.augment`), on the training device.

* Geometry: evaluation splits store exactly what the shared :class:`Preprocessing` produces
  before normalisation (resize + centre crop), so cached evaluation equals uncached evaluation
  bit for bit. The training split stores the central square of each image, shorter side
  resized to ``side`` (slightly above the model input), for random crops to cut from.
* Key: a hash of the file list with each file's size and modification time, the stored
  geometry and the pixel limit; any change to a file gives a new key, so a stale cache is
  never read. Old entries are left in place (delete the folder to reclaim the space).
* Bad files are found with :func:`vit.folder.check_image`, the same check as the uncached path,
  and stored in the entry's metadata so a cache hit reports exactly the same skipped files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from serve.preprocess import DEFAULT_MAX_PIXELS, Preprocessing, decode_image
from vit.atomic import atomic_file, write_atomic
from vit.folder import SPLIT_NAMES, Splits, check_image, kept_splits, probe_headers

CACHE_VERSION = 1
CACHE_MODES = (True, False, "auto")


def default_cache_dir() -> Path:
    """``$VIT_CACHE_DIR`` or ``~/.cache/vit/decoded``: shared by runs, so a data set is decoded once."""
    return Path(os.environ.get("VIT_CACHE_DIR") or "~/.cache/vit/decoded").expanduser()


def square_preprocessing(side: int, interpolation: str = "bicubic") -> Preprocessing:
    """Shorter side resized to ``side``, central ``side x side`` square kept (the training store)."""
    return Preprocessing(input_size=(side, side), crop_pct=1.0, interpolation=interpolation)


def train_side(paths: list[str], img_size: int, eval_scale: int, probe: int = 256) -> int:
    """Stored training side: ``eval_scale`` (slightly above ``img_size``), but never an upscale.

    The median shorter side of up to ``probe`` evenly spaced files (headers only) caps it, so
    32 px images are kept at 32 px for a 32 px model rather than blown up to 36.
    """
    sides = [min(size) for size, _ in probe_headers(paths, probe)]
    median = int(statistics.median(sides)) if sides else eval_scale
    return max(img_size, min(eval_scale, median))


def cache_key(paths: list[str], preprocessing: Preprocessing, max_pixels: int) -> str:
    """Hash of (path, size, mtime) of every file plus the stored geometry and pixel limit."""
    geometry = {k: v for k, v in preprocessing.to_dict().items() if k not in ("mean", "std")}
    digest = hashlib.sha256()
    header = {"version": CACHE_VERSION, "geometry": geometry, "max_pixels": max_pixels}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def estimated_bytes(count: int, side: int) -> int:
    return count * side * side * 3


def cache_fits(needed: int, cache_dir: Path) -> bool:
    """For ``cache="auto"``: the arrays take at most half the free disk and half the free memory."""
    folder = cache_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free_disk = shutil.disk_usage(folder).free
    try:
        free_ram = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every platform reports it
        free_ram = free_disk
    return needed <= 0.5 * min(free_disk, free_ram)


@dataclass(frozen=True)
class DecodedArray:
    """One cache entry: row ``r`` of the array at ``path`` holds ``paths[r]``; ``kept`` lists the usable rows (rows of skipped files stay zero)."""

    path: Path
    kept: list[int] = field(repr=False)
    skipped: list[tuple[str, str]] = field(repr=False)


def _decode(path: str, preprocessing: Preprocessing, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    reason = check_image(path, max_pixels)  # the uncached path's check, so reasons read the same
    if reason is not None:
        return None, reason
    image = decode_image(path, max_pixels=max_pixels, preprocessing=preprocessing)
    return np.asarray(preprocessing.resize_and_crop(image)), None


def _build(
    paths: list[str], preprocessing: Preprocessing, max_pixels: int, target: Path, workers: int
) -> list[tuple[str, str]]:
    """Decode ``paths`` into ``target`` (.npy, written beside it and renamed); returns skips."""
    height, width = preprocessing.input_size
    skipped: list[tuple[str, str]] = []
    with atomic_file(target) as tmp:
        array = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(paths), height, width, 3)
        )
        # Threads: PIL releases the GIL while decoding and resizing.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = pool.map(lambda p: _decode(p, preprocessing, max_pixels), paths, chunksize=64)
            for row, (path, (pixels, reason)) in enumerate(zip(paths, results, strict=True)):
                if reason is not None:
                    skipped.append((path, reason))
                else:
                    array[row] = pixels
        array.flush()
        del array
    return skipped


def load_or_build(
    paths: list[str],
    preprocessing: Preprocessing,
    cache_dir: Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> DecodedArray:
    """The cache entry for ``paths`` decoded with ``preprocessing``, decoding only on a miss."""
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, preprocessing, max_pixels)
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    meta = _read_meta(meta_path, array_path, len(paths), preprocessing)
    if meta is None:
        height, width = preprocessing.input_size
        rank_zero_info(f"decoding {len(paths)} images at {width}x{height} into the cache {array_path}")
        start = time.monotonic()
        skipped = _build(paths, preprocessing, max_pixels, array_path, workers or os.cpu_count() or 1)
        meta = {"version": CACHE_VERSION, "count": len(paths), "size": [height, width], "skipped": skipped}
        write_atomic(meta_path, json.dumps(meta).encode())
        rank_zero_info(f"decoded {len(paths)} images in {time.monotonic() - start:.1f} s")
    skipped = [(str(path), str(reason)) for path, reason in meta["skipped"]]
    bad = {path for path, _ in skipped}
    kept = [i for i, path in enumerate(paths) if path not in bad]
    return DecodedArray(array_path, kept, skipped)


def _read_meta(meta_path: Path, array_path: Path, count: int, preprocessing: Preprocessing) -> dict | None:
    """The entry's metadata when the entry is complete and matches, else None (rebuild)."""
    try:
        meta = json.loads(meta_path.read_text())
        header = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    expected = (count, *preprocessing.input_size, 3)
    if meta.get("version") != CACHE_VERSION or header.shape != expected or header.dtype != np.uint8:
        return None
    return meta


class CachedImageDataset(Dataset):
    """Rows of a decoded array with their labels.

    ``dataset[[i, j, …]]`` returns a whole batch (uint8 ``N x 3 x H x W``, int64 labels) from one
    memory-mapped read; use it with a ``BatchSampler`` as the loader's sampler and
    ``batch_size=None``. The array is opened lazily, so worker processes map it themselves.
    """

    def __init__(self, array_path: Path, rows: list[int], labels: list[int]) -> None:
        self.array_path = Path(array_path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}  # never pickle the mapped pixels into workers

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return self._array

    def __getitem__(self, index: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        single = isinstance(index, (int, np.integer))
        indices = np.atleast_1d(np.asarray(index, dtype=np.int64))
        order = np.argsort(self.rows[indices], kind="stable")  # ascending rows: sequential reads
        indices = indices[order]
        pixels = torch.from_numpy(np.ascontiguousarray(self.array[self.rows[indices]]))
        images = pixels.permute(0, 3, 1, 2)  # NHWC storage -> NCHW view
        labels = torch.from_numpy(self.labels[indices])
        return (images[0], labels[0]) if single else (images, labels)


@dataclass
class CachedSplits:
    """Every split of a folder in the cache: train as squares, val/test in eval geometry."""

    splits: Splits
    entries: dict[str, DecodedArray]

    @classmethod
    def prepare(
        cls,
        splits: Splits,
        eval_preprocessing: Preprocessing,
        train_preprocessing: Preprocessing,
        cache_dir: Path,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> CachedSplits:
        """Load or build each split; the returned splits have bad files removed and listed."""
        entries: dict[str, DecodedArray] = {}
        kept: dict[str, list] = {}
        skipped: list[tuple[str, str]] = []
        for split in SPLIT_NAMES:
            samples = getattr(splits, split)
            if not samples:
                kept[split] = []
                continue
            preprocessing = train_preprocessing if split == "train" else eval_preprocessing
            entry = load_or_build([p for p, _ in samples], preprocessing, cache_dir, max_pixels)
            entries[split] = entry
            kept[split] = [samples[i] for i in entry.kept]
            skipped += entry.skipped
        return cls(kept_splits(splits, kept, skipped), entries)

    def dataset(self, split: str) -> CachedImageDataset:
        entry = self.entries[split]
        labels = [label for _, label in getattr(self.splits, split)]
        return CachedImageDataset(entry.path, entry.kept, labels)


def open_cache(
    splits: Splits,
    preprocessing: Preprocessing,
    mode: bool | str,
    cache_dir: str | Path | None = None,
    side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CachedSplits | None:
    """The cached splits for a DataModule, or None when ``mode`` is off (or "auto" and too big).

    ``preprocessing`` is the evaluation definition; the training store keeps squares of
    ``side`` (default :func:`train_side`) with the same interpolation.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache must be true, false or 'auto', got {mode!r}")
    if not mode:
        return None
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    img_size = max(preprocessing.input_size)
    if not side:
        side = train_side([p for p, _ in splits.train], img_size, max(preprocessing.scale_size))
    if mode == "auto":
        needed = estimated_bytes(len(splits.train), side)
        needed += estimated_bytes(len(splits.val) + len(splits.test), img_size)
        if not cache_fits(needed, folder):
            rank_zero_info(
                f"data.cache=auto: {needed / 2**30:.1f} GiB of decoded images do not fit; not caching"
            )
            return None
    train_store = square_preprocessing(side, preprocessing.interpolation)
    return CachedSplits.prepare(splits, preprocessing, train_store, folder, max_pixels)
