"""A classifier loaded from a MODEL path: an ONNX file (onnxruntime) or a ``vit fit`` checkpoint (torch).

``vit predict``, ``vit eval`` and the export self-check open models here; the model carries its
own :class:`~serve.preprocess.Preprocessing` (ONNX metadata or checkpoint), never command-line
flags. Torch is imported only when a checkpoint is opened.
"""

from __future__ import annotations

import typing
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.metadata import ModelMetadata
from serve.preprocess import Preprocessing
from serve.settings import Device
from serve.trust import Trust

DEVICES: tuple[str, ...] = typing.get_args(Device)  # the server's choices: one list for both


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
    trust: Trust = field(default_factory=Trust)  # calibration and OOD rule (serve/trust.py)

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
            trust=Trust.from_metadata(metadata),
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
            trust=Trust((loaded.info.get("calibration") or {}).get("temperature", 1.0)),
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
