"""The model adapter: onnxruntime sessions and the arithmetic around them (torch-free).

Transport (HTTP, queues, batching) lives elsewhere; this file only knows how to load a
self-describing ONNX file, run a batch of preprocessed images and turn logits into labels.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serve.metadata import MetadataError, ModelMetadata
from serve.trust import Trust, TrustError

log = logging.getLogger("serve.engine")

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class EngineError(RuntimeError):
    """The model file cannot be served; the message names the file and the reason."""


@dataclass
class Outputs:
    """One batch's raw outputs: logits [N, C] and, when asked for, attention [N, gh, gw]."""

    logits: np.ndarray
    attention: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_providers(device: str) -> list[Any]:
    """onnxruntime providers for ``auto``/``cpu``/``cuda``; ``cuda`` without support is an error."""
    available = ort.get_available_providers()
    cuda = (
        "CUDAExecutionProvider",
        # Grow the GPU arena by what is asked for, not by doubling: flat memory on long runs.
        {"arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"},
    )
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return [cuda, "CPUExecutionProvider"]
    if device == "cuda":
        raise EngineError(
            "--device cuda: this onnxruntime has no CUDA provider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu"
        )
    return ["CPUExecutionProvider"]


def default_instances(device: str) -> int:
    """Concurrent inference calls when not configured: 1 on CUDA (one large batch keeps the GPU
    busy), 2 on CPUs: on 2 cores, two single-threaded calls at once (one session per
    instance) give more images per second than the best two-threaded call at any batch
    size (docs/BENCHMARKS.md)."""
    cuda = device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers()
    return 1 if cuda else 2


def session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    """CPU-friendly options; ``spinning`` lets idle intra-op threads spin between operators
    (onnxruntime's default), for a session that runs only while nothing else does."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning workers burn the cores that decoding needs: with decoding alongside, batch-1
    # latency is lower without it; alone on the cores, spinning is faster (docs/BENCHMARKS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # Batch sizes vary from call to call: per-shape memory patterns would only pile up.
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = True
    options.log_severity_level = 3
    return options


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Engine:
    """A loaded, warmed-up model: ``infer`` a preprocessed batch, read labels from metadata.

    ``session`` has all ``threads`` (lowest latency for one call); ``instance_sessions`` are
    added by :func:`serve.instances.warm_up` for batches running at once. ``spinning``:
    ``session``'s idle threads spin between operators, for a server that runs it only on an
    otherwise idle CPU (its lone requests, :meth:`serve.batcher.Batcher.alone`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        threads: int = 0,
        spinning: bool = False,
        ood_threshold: float | None = None,
    ) -> None:
        start = time.perf_counter()
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"{self.path}: no such model file")
        self.threads = threads or cpu_count()
        self.session = self.open_session(self.threads, choose_providers(device), spinning)
        self.instance_sessions: list[ort.InferenceSession] = []  # set by serve.instances.warm_up
        self.instance_threads = self.threads  # intra-op threads of an instance's call
        self.providers = self.session.get_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise EngineError(f"{self.path}: --device cuda but onnxruntime fell back to {self.providers}")
        try:
            self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map)
            self.trust = Trust.from_metadata(self.metadata, ood_threshold)
        except (MetadataError, TrustError) as exc:
            raise EngineError(f"{self.path}: {exc}") from exc
        self.file_sha256 = file_sha256(self.path)
        self._bind_io()
        self.load_seconds = time.perf_counter() - start

    def open_session(
        self, threads: int, providers: list[Any], spinning: bool = False
    ) -> ort.InferenceSession:
        try:
            options = session_options(threads, spinning)
            return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported files
            raise EngineError(f"{self.path}: onnxruntime cannot load it ({exc})") from exc

    def _bind_io(self) -> None:
        """Find the image input and the logits/attention outputs; check they fit the metadata."""
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise EngineError(f"{self.path}: expected one NCHW image input, got {[i.shape for i in inputs]}")
        image = inputs[0]
        self.input_name = image.name
        self.input_dtype = ORT_DTYPES.get(image.type)
        if self.input_dtype is None:
            raise EngineError(f"{self.path}: unsupported input type {image.type}")
        height, width = self.metadata.preprocessing.input_size
        batch, channels, h, w = image.shape
        expected = {1: 3, 2: height, 3: width}
        for axis, dim in ((1, channels), (2, h), (3, w)):
            if isinstance(dim, int) and dim != expected[axis]:
                raise EngineError(
                    f"{self.path}: input shape {image.shape} does not match preprocessing "
                    f"input_size {self.metadata.preprocessing.input_size}"
                )
        self.input_shape = (3, height, width)
        # A static batch axis (an export without a dynamic batch) caps and pads every batch.
        self.static_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.run_batch_size: int | None = self.static_batch  # set by serve.instances.warm_up
        outputs = {o.name: o for o in self.session.get_outputs()}
        names = list(outputs)
        wanted = self.metadata.outputs.get("logits") or names[0]
        self.logits_name = wanted if wanted in names else names[0]
        classes = outputs[self.logits_name].shape[-1]
        if isinstance(classes, int) and classes != len(self.metadata.labels):
            raise EngineError(
                f"{self.path}: {classes} outputs but {len(self.metadata.labels)} labels in the metadata"
            )
        attention = self.metadata.outputs.get("attention")
        self.attention_name = attention if attention in names else None
        # Outputs the trust rules read besides the logits (an in-graph OOD score), run every call.
        self.trust_names = [n for n in self.trust.output_names if n not in (self.logits_name, "logits")]
        missing = [n for n in self.trust_names if n not in names]
        if missing:
            raise EngineError(f"{self.path}: the metadata names output(s) {missing} that the graph lacks")
        self.output_names = names

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    @property
    def has_attention(self) -> bool:
        return self.attention_name is not None

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def infer(self, batch: np.ndarray, with_attention: bool = False, instance: int | None = None) -> Outputs:
        """Preprocessed float batch [N, 3, H, W] -> logits (and attention when asked and present).

        ``instance``: run on that instance's session (see :func:`serve.instances.warm_up`); else on the session
        with all threads.
        """
        count = batch.shape[0]
        if self.static_batch is not None and count < self.static_batch:
            padding = np.zeros((self.static_batch - count, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, padding])
        attend = with_attention and self.attention_name is not None
        wanted = [self.logits_name, *([self.attention_name] if attend else []), *self.trust_names]
        sessions = self.instance_sessions
        session = sessions[instance % len(sessions)] if instance is not None and sessions else self.session
        results = session.run(wanted, {self.input_name: batch.astype(self.input_dtype, copy=False)})
        logits = np.asarray(results[0][:count], dtype=np.float32)
        attention = np.asarray(results[1][:count], dtype=np.float32) if attend else None
        extra = {
            name: np.asarray(r[:count])
            for name, r in zip(self.trust_names, results[1 + attend :], strict=True)
        }
        return Outputs(logits=logits, attention=attention, extra=extra)

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` reports."""
        meta = self.metadata
        return {
            "model_name": meta.model_name,
            "version": meta.weights_sha256[:12] or self.file_sha256[:12],
            "weights_sha256": meta.weights_sha256,
            "file_sha256": self.file_sha256,
            "labels": list(meta.labels),
            "num_classes": len(meta.labels),
            "input": {"name": self.input_name, "shape": [-1, *self.input_shape], "dtype": "FP32"},
            "input_size": list(meta.preprocessing.input_size),
            "preprocessing": meta.preprocessing.to_dict(),
            "precision": meta.precision,
            "has_attention": self.has_attention,
            "provider": self.providers[0],
            "providers": list(self.providers),
            "exported_at": meta.exported_at,
            "versions": dict(meta.versions),
            "load_seconds": round(self.load_seconds, 4),
            "run_batch_size": self.run_batch_size,
            "trust": self.trust.describe(),
        }
