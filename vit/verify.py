"""The export self-check: the same inputs through PyTorch and onnxruntime, compared.

Inputs are real images from ``--check-data`` (through the shared preprocessing, labelled when
they sit in folders named after the model's classes) or, without it, generated images of varied
sizes through the same preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from serve.metadata import ModelMetadata
from serve.preprocess import Preprocessing
from vit.batches import image_batches
from vit.folder import is_image_file

FP32_TOLERANCE = 1e-4  # max |logit difference| accepted between the fp32 ONNX file and PyTorch


@dataclass
class CheckInputs:
    images: np.ndarray  # float32 [N, 3, H, W]
    targets: np.ndarray | None  # class index per image, when every image is labelled
    source: str
    skipped: list[tuple[str, str]]
    generated: bool = False  # made up by generated_inputs, not real images


@dataclass
class Comparison:
    """Candidate outputs against reference outputs on the same inputs."""

    max_abs_diff: float
    top1_agreement: float
    accuracy: float | None  # of the candidate, when the inputs are labelled


def sample_check_files(root: Path, limit: int) -> list[Path]:
    """Up to ``limit`` image files under ``root``, spread evenly over the sorted list."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--check-data: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if is_image_file(p))
    if not files:
        raise FileNotFoundError(f"--check-data: no image files under {root}")
    if len(files) > limit:
        picks = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in sorted(set(picks.tolist()))]
    return files


def load_check_inputs(
    root: Path, labels: list[str], preprocessing: Preprocessing, limit: int = 256
) -> CheckInputs:
    """Real images; targets are the images' folder names when all of them are class names."""
    files = sample_check_files(root, limit)
    kept: list[Path] = []
    arrays: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    for batch in image_batches(files, preprocessing, batch_size=64):
        kept += batch.items
        arrays.append(batch.images)
        skipped += [(str(p), reason) for p, reason in batch.failed]
    if not kept:
        raise ValueError(f"--check-data: none of the {len(files)} images under {root} could be decoded")
    index = {name: i for i, name in enumerate(labels)}
    targets = None
    if all(p.parent.name in index for p in kept):
        targets = np.array([index[p.parent.name] for p in kept])
    return CheckInputs(np.concatenate(arrays), targets, f"{len(kept)} images from {root}", skipped)


def generated_inputs(preprocessing: Preprocessing, n: int = 16, seed: int = 0) -> CheckInputs:
    """Noise-and-gradient images of varied sizes and aspect ratios, preprocessed like real ones."""
    rng = np.random.default_rng(seed)
    height, width = preprocessing.input_size
    arrays = []
    for _ in range(n):
        h = int(height * rng.uniform(0.5, 2.0)) + 1
        w = int(width * rng.uniform(0.5, 2.0)) + 1
        ramp = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0, 1, 3)
        pixels = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        arrays.append(preprocessing(Image.fromarray(pixels, "RGB")))
    return CheckInputs(np.stack(arrays), None, f"{n} generated images", [], generated=True)


def run_torch(module: Any, images: np.ndarray, batch_size: int = 32) -> list[np.ndarray]:
    """Outputs of ``module`` (a tensor or a tuple of tensors) as float32 arrays, in batches."""
    import torch

    chunks: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out = module(torch.from_numpy(images[start : start + batch_size]))
            out = out if isinstance(out, (tuple, list)) else (out,)
            chunks.append([o.float().numpy() for o in out])
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def run_onnx(session: Any, images: np.ndarray, batch_size: int = 32) -> list[np.ndarray]:
    """Every output of an onnxruntime session, in graph order, batched like :func:`run_torch`."""
    name = session.get_inputs()[0].name
    chunks = [
        session.run(None, {name: images[s : s + batch_size]}) for s in range(0, len(images), batch_size)
    ]
    return [np.concatenate(parts).astype(np.float32) for parts in zip(*chunks, strict=True)]


def accuracy(logits: np.ndarray, targets: np.ndarray | None) -> float | None:
    return None if targets is None else float((logits.argmax(-1) == targets).mean())


def compare(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray | None) -> Comparison:
    return Comparison(
        max_abs_diff=float(np.abs(reference - candidate).max()),
        top1_agreement=float((reference.argmax(-1) == candidate.argmax(-1)).mean()),
        accuracy=accuracy(candidate, targets),
    )


@dataclass
class FileReport:
    """One written file and how its outputs compare with the reference on the check inputs."""

    precision: str
    path: Path
    size_bytes: int
    reference: str  # "torch" for fp32; "fp32 onnx" for int8/fp16
    comparison: Comparison
    attention_max_abs_diff: float | None = None
    ok: bool = True
    method: str = ""  # how it was made: "fused", "dynamic", "static minmax", ...
    images_per_second: float | None = None  # measured at export (vit.recommend.time_files)


@dataclass
class Checker:
    """Runs a staged file on the check inputs and compares it: fp32 with PyTorch (strict), a
    reduced-precision file with the fp32 file's outputs (reported, never failing the export)."""

    inputs: CheckInputs
    reference: list[np.ndarray]  # PyTorch's outputs on ``inputs`` (logits first)
    tolerance: float = FP32_TOLERANCE
    fp32_outputs: list[np.ndarray] | None = None  # the installed fp32 file's, once it passed

    def fp32(self, session: Any, target: Path, size: int, method: str = "") -> FileReport:
        outputs = run_onnx(session, self.inputs.images)
        report = self._report("fp32", target, size, "torch", self.reference, outputs, method)
        worst = max(report.comparison.max_abs_diff, report.attention_max_abs_diff or 0.0)
        report.ok = worst <= self.tolerance and report.comparison.top1_agreement == 1.0
        if report.ok:
            self.fp32_outputs = outputs
        return report

    def reduced(self, session: Any, target: Path, size: int, precision: str, method: str = "") -> FileReport:
        if self.fp32_outputs is None:
            raise RuntimeError("the fp32 file is checked first: reduced files are compared with it")
        outputs = run_onnx(session, self.inputs.images)
        return self._report(precision, target, size, "fp32 onnx", self.fp32_outputs, outputs, method)

    def _report(
        self,
        precision: str,
        target: Path,
        size: int,
        reference: str,
        against: list[np.ndarray],
        outputs: list[np.ndarray],
        method: str,
    ) -> FileReport:
        # The PyTorch reference has the rollout second when the file has an attention output;
        # outputs after those (an OOD score) are not compared here.
        with_attention = len(self.reference) > 1
        attention = float(np.abs(against[1] - outputs[1]).max()) if with_attention else None
        comparison = compare(against[0], outputs[0], self.inputs.targets)
        return FileReport(precision, target, size, reference, comparison, attention, method=method)


@dataclass
class ExportReport:
    output: Path
    metadata: ModelMetadata
    inputs: CheckInputs
    torch_accuracy: float | None
    files: list[FileReport] = field(default_factory=list)  # the files written, fp32 first
    discarded: list[FileReport] = field(default_factory=list)  # checked, measured, not kept
    triton: Path | None = None
    tolerance: float = FP32_TOLERANCE
    notes: list[str] = field(default_factory=list)  # e.g. why a fused graph was dropped

    @property
    def ok(self) -> bool:
        """The fp32 file matches PyTorch (max |logit diff| and top-1 agreement) and was written."""
        return bool(self.files) and self.files[0].ok

    def format(self) -> str:
        """The table of files (kept and discarded), the verdict and the file to deploy."""
        from vit.recommend import recommendation

        meta = self.metadata
        height, width = meta.preprocessing.input_size
        labelled = " (labelled)" if self.inputs.targets is not None else ""
        header = [
            "file",
            "made by",
            "size",
            "compared with",
            "max|dlogit|",
            "top-1 agree",
            "accuracy",
            "img/s",
        ]
        rows = [header] + [self._row(f) for f in self.files]
        rows += [self._row(f, kept=False) for f in self.discarded]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            f"model: {meta.model_name}, {len(meta.labels)} classes, input 3x{height}x{width}, "
            f"weights sha256 {meta.weights_sha256[:12]}",
            f"self-check on {self.inputs.source}{labelled}:",
            *(
                "  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                for row in rows
            ),
        ]
        if self.inputs.skipped:
            path, reason = self.inputs.skipped[0]
            lines.append(f"  {len(self.inputs.skipped)} check image(s) skipped, e.g. {path}: {reason}")
        lines += [f"  note: {note}" for note in self.notes]
        verdict = "passed" if self.ok else f"FAILED, {self.output} not written"
        lines.append(
            f"check {verdict}: fp32 needs max|dlogit| <= {self.tolerance:g} and 100% top-1 agreement"
        )
        if self.triton:
            lines.append(f"triton model repository: {self.triton}")
        if self.ok:
            lines.append(recommendation(self).line)
        return "\n".join(lines)

    def _row(self, f: FileReport, kept: bool = True) -> list[str]:
        c = f.comparison
        fp32 = self.files[0] if self.files else None
        size = f"{f.size_bytes / 1e6:.2f} MB"
        if f.precision != "fp32" and fp32 and fp32.size_bytes:
            size += f" ({f.size_bytes / fp32.size_bytes:.2f}x)"
        accuracy = "n/a" if c.accuracy is None else f"{100 * c.accuracy:.2f}%"
        if f.precision == "fp32" and self.torch_accuracy is not None:
            accuracy += f" (torch {100 * self.torch_accuracy:.2f}%)"
        diff = f"{c.max_abs_diff:.2e}"
        if f.attention_max_abs_diff is not None:
            diff += f" (attention {f.attention_max_abs_diff:.2e})"
        speed = "n/a"
        if f.images_per_second:
            speed = f"{f.images_per_second:.0f}"
            if fp32 is not None and fp32.images_per_second and f is not fp32:
                speed += f" ({f.images_per_second / fp32.images_per_second:.2f}x)"
        name = f.path.name if kept else "(not kept)"
        method = f.method or f.precision
        return [name, method, size, f.reference, diff, f"{100 * c.top1_agreement:.2f}%", accuracy, speed]
