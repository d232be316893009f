"""Raw model outputs -> answers to trust: calibrated probabilities, an OOD score, an "unknown" flag.

The one place that does it (numpy only): ``vit predict``, ``vit eval``, ``vit explain`` and the
server all call :meth:`Trust.apply` on a batch's outputs and :func:`top_k` per image. What it
applies comes from the file's metadata (:class:`serve.metadata.Calibration`,
:class:`serve.metadata.OodSpec`); a file without them gets temperature 1, no score, nothing
unknown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.metadata import ModelMetadata, OodSpec


class TrustError(ValueError):
    """The outputs or the settings do not fit the model's trust metadata; the message says why."""


@dataclass
class Prediction:
    label: str
    index: int
    score: float  # calibrated probability

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": self.score}


@dataclass
class Verdicts:
    """One batch: calibrated probabilities [N, C], OOD scores [N] (or None) and unknown flags [N]."""

    probabilities: np.ndarray
    ood_scores: np.ndarray | None
    unknown: np.ndarray

    def ood_score(self, i: int) -> float | None:
        """Image ``i``'s score as a JSON-ready float, or None when the model has no OOD score."""
        return None if self.ood_scores is None else float(self.ood_scores[i])


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64, stable for large logits."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def msp_score(probabilities: np.ndarray) -> np.ndarray:
    """1 - the top probability (maximum softmax probability, turned so that higher = less known)."""
    return 1.0 - np.asarray(probabilities).max(axis=-1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """``-logsumexp(logits)`` (the energy score of Liu et al. 2020 at T = 1): higher = less known."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=-1)
    return -(top + np.log(np.exp(z - top[:, None]).sum(axis=-1)))


class Trust:
    """Temperature and OOD rule of one model; ``ood_threshold`` overrides the file's threshold."""

    def __init__(
        self,
        temperature: float = 1.0,
        ood: OodSpec | None = None,
        ood_threshold: float | None = None,
        logits_name: str = "logits",
    ) -> None:
        if not (math.isfinite(temperature) and temperature > 0):
            raise TrustError(f"temperature must be a finite number > 0, got {temperature}")
        if ood_threshold is not None and ood is None:
            raise TrustError(
                "an OOD threshold was given but the model file has no OOD score "
                "(export it with `vit export --check-data DIR`)"
            )
        self.temperature = float(temperature)
        self.ood = ood
        self.threshold = (
            None if ood is None else float(ood.threshold if ood_threshold is None else ood_threshold)
        )
        self.logits_name = logits_name

    @classmethod
    def from_metadata(cls, meta: ModelMetadata, ood_threshold: float | None = None) -> Trust:
        """The trust rules a file carries (version-1 files: temperature 1, no OOD score)."""
        temperature = meta.calibration.temperature if meta.calibration else 1.0
        logits = meta.outputs.get("logits") or "logits"
        return cls(temperature, meta.ood, ood_threshold, logits)

    @property
    def score_output(self) -> str | None:
        """The graph output holding the OOD score, when the graph computes it (Mahalanobis)."""
        return self.ood.output if self.ood is not None else None

    @property
    def output_names(self) -> list[str]:
        """The outputs :meth:`apply` reads: the logits and, for an in-graph score, that output."""
        return [self.logits_name, *([self.score_output] if self.score_output else [])]

    def _get(self, outputs: Mapping[str, np.ndarray], name: str, role: str) -> np.ndarray:
        # Keyed by output name (the server) or by role (vit's classifiers); equal in vit exports.
        if name in outputs:
            return outputs[name]
        if role in outputs:
            return outputs[role]
        raise TrustError(f"model output {name!r} missing from the outputs ({', '.join(outputs)})")

    def apply(self, outputs: Mapping[str, np.ndarray]) -> Verdicts:
        """A batch's outputs {output name -> array} -> :class:`Verdicts`."""
        logits = np.asarray(self._get(outputs, self.logits_name, "logits"))
        if logits.ndim != 2:
            raise TrustError(f"logits must be [N, classes], got shape {logits.shape}")
        probabilities = softmax(logits, self.temperature)
        scores = self.scores(outputs, logits, probabilities)
        unknown = np.zeros(len(logits), bool) if scores is None else scores > self.threshold
        return Verdicts(probabilities.astype(np.float32), scores, unknown)

    def scores(
        self, outputs: Mapping[str, np.ndarray], logits: np.ndarray, probabilities: np.ndarray
    ) -> np.ndarray | None:
        """OOD scores [N] (float64) by the file's method, or None when it has none."""
        if self.ood is None:
            return None
        if self.ood.method == "msp":
            return msp_score(probabilities)
        if self.ood.method == "energy":
            return energy_score(logits)
        score = np.asarray(self._get(outputs, self.ood.output or "", "ood_score"), np.float64).reshape(-1)
        if score.shape[0] != logits.shape[0]:
            raise TrustError(f"OOD score output has {score.shape[0]} rows for {logits.shape[0]} images")
        return score

    def describe(self) -> dict[str, Any]:
        """What a server reports about its trust rules (e.g. in ``GET /v1/model``)."""
        return {
            "temperature": self.temperature,
            "ood_method": self.ood.method if self.ood else None,
            "ood_threshold": self.threshold,
            "ood_accept_rate": self.ood.accept_rate if self.ood else None,
        }


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[Prediction]:
    """One image's probabilities [C] -> the ``k`` most probable classes (k clamped to C), best first."""
    row = np.asarray(probabilities)
    k = max(1, min(int(k), row.shape[0]))
    order = np.argsort(-row, kind="stable")[:k]
    return [Prediction(label=labels[i], index=int(i), score=float(row[i])) for i in order]
