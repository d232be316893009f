"""Image batches: lists of files decoded and preprocessed in threads, one batch ahead of the model.

Every tool that feeds files to a model (``vit predict``, ``vit eval``, the export self-check)
decodes with :func:`serve.preprocess.decode_image` and applies the model's own
:class:`~serve.preprocess.Preprocessing` here, so their numbers are directly comparable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.preprocess import DEFAULT_MAX_PIXELS, ImageError, Preprocessing, decode_image


@dataclass
class Batch:
    """Preprocessed images that decoded (``items``: caller's objects, in order) and the failures."""

    items: list[Any]
    images: np.ndarray
    failed: list[tuple[Any, str]] = field(default_factory=list)  # (item, reason)


def load_image(
    path: str | Path, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """One file -> float32 [3, H, W]; :class:`ImageError` (reason without the path) when it can't."""
    try:
        image = decode_image(path, max_pixels=max_pixels, preprocessing=preprocessing)
    except ImageError as exc:
        raise ImageError(str(exc).removeprefix(f"{path}: ")) from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file, say why"
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    return preprocessing(image)


def image_batches(
    items: Iterable[Any],
    preprocessing: Preprocessing,
    batch_size: int = 32,
    workers: int = 2,
    path_of: Any = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[Batch]:
    """Decode and preprocess in threads (PIL releases the GIL), one batch ahead of the model.

    ``items`` are paths, or anything ``path_of(item)`` turns into a path (e.g. (path, label)).
    """
    path_of = path_of or (lambda item: item)
    items = list(items)
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]

    def load(item: Any) -> np.ndarray | str:
        try:
            return load_image(path_of(item), preprocessing, max_pixels)
        except ImageError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[list[Future]] = deque()
        for index in range(len(chunks)):
            while len(pending) < 2 and index + len(pending) < len(chunks):
                pending.append([pool.submit(load, item) for item in chunks[index + len(pending)]])
            results = [future.result() for future in pending.popleft()]
            ok = [(item, r) for item, r in zip(chunks[index], results, strict=True) if not isinstance(r, str)]
            failed = [(item, r) for item, r in zip(chunks[index], results, strict=True) if isinstance(r, str)]
            height, width = preprocessing.input_size
            images = np.stack([r for _, r in ok]) if ok else np.empty((0, 3, height, width), np.float32)
            yield Batch([item for item, _ in ok], images, failed)
