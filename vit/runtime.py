"""A classifier from a MODEL path (ONNX file or vit checkpoint) plus the shared batching code.

``vit predict``, ``vit eval`` and the export self-check feed images through exactly one path:
:func:`image_batches` decodes with :func:`serve.preprocess.decode_image` and applies the model's
own :class:`~serve.preprocess.Preprocessing` (from the ONNX metadata or the checkpoint), never
from command-line flags. Torch is imported only when a checkpoint is opened.
"""

from __future__ import annotations

import zipfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.metadata import ModelMetadata
from serve.preprocess import DEFAULT_MAX_PIXELS, ImageError, Preprocessing, decode_image

DEVICES = ("auto", "cpu", "cuda")


class ModelLoadError(ValueError):
    """MODEL cannot be opened as an ONNX file or a vit checkpoint; the message says why."""


def open_session(model: bytes | str | Path, device: str = "auto", threads: int | None = None) -> Any:
    """An onnxruntime session on the providers the server would pick for ``device``."""
    import onnxruntime as ort

    from serve.engine import EngineError, choose_providers, session_options

    try:
        providers = choose_providers(device)
    except EngineError as exc:  # --device cuda without onnxruntime-gpu
        raise ModelLoadError(str(exc)) from exc
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads or 0), providers=providers)


@dataclass
class Classifier:
    """Labels, preprocessing and a batch -> outputs function; one per MODEL path."""

    labels: list[str]
    preprocessing: Preprocessing
    description: str

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [N, 3, H, W] -> {"logits": [N, classes], ...}."""
        raise NotImplementedError

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)["logits"]


@dataclass
class OnnxClassifier(Classifier):
    session: Any = None
    metadata: ModelMetadata | None = None

    @classmethod
    def open(
        cls, model: bytes | str | Path, device: str = "auto", threads: int | None = None
    ) -> OnnxClassifier:
        name = "model" if isinstance(model, bytes) else str(model)
        try:
            session = open_session(model, device, threads)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises several private exception types
            raise ModelLoadError(f"{name}: cannot open as an ONNX model ({exc})") from exc
        metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
        provider = session.get_providers()[0].removesuffix("ExecutionProvider")
        return cls(
            labels=metadata.labels,
            preprocessing=metadata.preprocessing,
            description=f"{name} (onnxruntime {provider}, {metadata.precision})",
            session=session,
            metadata=metadata,
        )

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(None, {self.session.get_inputs()[0].name: images})
        outputs = dict(zip(names, values, strict=True))
        wanted = (self.metadata.outputs if self.metadata else None) or {"logits": names[0]}
        return {role: outputs[name] for role, name in wanted.items() if name}


@dataclass
class TorchClassifier(Classifier):
    net: Any = None
    device: str = "cpu"

    @classmethod
    def open(cls, path: str | Path, device: str = "auto", threads: int | None = None) -> TorchClassifier:
        import torch

        from vit.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        if device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("--device cuda: torch sees no CUDA GPU")
        device = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
        try:
            loaded = load_checkpoint(path)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"{path}: cannot load checkpoint ({exc})") from exc
        return cls(
            labels=loaded.labels,
            preprocessing=loaded.preprocessing,
            description=f"{path} (torch {device})",
            net=loaded.net.to(device),
            device=device,
        )

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            logits = self.net(torch.from_numpy(images).to(self.device))
        return {"logits": logits.float().cpu().numpy()}


def load_classifier(path: str | Path, device: str = "auto", threads: int | None = None) -> Classifier:
    """An ONNX file (onnxruntime) or a ``vit fit`` checkpoint (torch), told apart by content."""
    if device not in DEVICES:
        raise ModelLoadError(f"device must be one of {DEVICES}, got {device!r}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"model file {path} not found")
    if zipfile.is_zipfile(path):  # torch.save writes a zip archive; ONNX is a bare protobuf
        return TorchClassifier.open(path, device, threads)
    return OnnxClassifier.open(path, device, threads)


# -- images -> batches ------------------------------------------------------------------------
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


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores per row, best first (stable for ties)."""
    k = min(k, scores.shape[-1])
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]
