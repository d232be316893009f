"""The ONNX metadata schema: what ``vit export`` writes and ``serve`` reads (torch-free).

Every field is one entry of the ONNX model's ``metadata_props`` (string key -> string
value); structured values are JSON. Other tools can read them with
``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`` or
``onnx.load(path).metadata_props``.

Schema version 2 (keys are prefixed ``vit.``). Version 1 is version 2 without
``vit.calibration``, ``vit.ood`` and ``vit.card``; such files still load (temperature 1, no OOD
score, nothing "unknown"):

=====================  ==========================================================
key                    value
=====================  ==========================================================
vit.schema_version     ``"2"``
vit.labels             JSON list of class names, in output order
vit.preprocessing      JSON object, :meth:`serve.preprocess.Preprocessing.to_dict`
vit.model              JSON object ``{"name": timm name, "config": {...}}``
vit.versions           JSON object of framework versions at export (torch, timm, ...)
vit.exported_at        ISO-8601 UTC timestamp
vit.weights_sha256     SHA-256 of the exported weights (hex), the model's version
vit.outputs            JSON object ``{"logits": name, "attention": name or null,
                       "ood_score": name or null}``
vit.precision          ``fp32`` | ``fp16`` | ``int8``
vit.optimizations      JSON list of the graph optimisations applied at export (optional)
vit.calibration        optional JSON object, :class:`Calibration` (temperature scaling)
vit.ood                optional JSON object, :class:`OodSpec` (the "unknown" flag)
vit.card               optional JSON object: the facts of the model card (:mod:`vit.card`)
=====================  ==========================================================

How the two trust objects are applied to outputs: :mod:`serve.trust`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from serve.preprocess import Preprocessing

SCHEMA_VERSION = 2
PREFIX = "vit."
REQUIRED_KEYS = ("schema_version", "labels", "preprocessing", "model", "weights_sha256")


OOD_METHODS = ("msp", "energy", "mahalanobis")


class MetadataError(ValueError):
    """The ONNX file lacks vit metadata or carries a version this code cannot read."""


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MetadataError(f"{PREFIX}{key} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling: calibrated probabilities are ``softmax(logits / temperature)``."""

    temperature: float = 1.0
    fitted_on: str = ""  # e.g. "val split of data/digits (270 images)"
    metrics: dict[str, Any] = field(default_factory=dict)  # {"before": {...}, "after": {...}}

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "fitted_on": self.fitted_on, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        if not isinstance(data, dict):
            raise MetadataError(f"{PREFIX}calibration must be a JSON object")
        temperature = _number(data.get("temperature", 1.0), "calibration.temperature")
        if temperature <= 0:
            raise MetadataError(f"{PREFIX}calibration.temperature must be > 0, got {temperature}")
        return cls(temperature, str(data.get("fitted_on", "")), dict(data.get("metrics") or {}))


@dataclass(frozen=True)
class OodSpec:
    """The out-of-distribution score (higher = less like the training data) and its threshold.

    ``method``: ``mahalanobis`` (the graph computes it: output ``output``), ``msp`` (1 - the top
    calibrated probability) or ``energy`` (``-logsumexp(logits)``), the last two from the logits.
    An image is "unknown" when its score is above ``threshold``, chosen so that ``accept_rate``
    of the validation images are accepted.
    """

    method: str
    threshold: float
    accept_rate: float = 0.95
    output: str | None = None
    fitted_on: str = ""
    stats: dict[str, Any] = field(default_factory=dict)  # what the score was fitted with

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "threshold": self.threshold,
            "accept_rate": self.accept_rate,
            "output": self.output,
            "fitted_on": self.fitted_on,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: Any) -> OodSpec:
        if not isinstance(data, dict):
            raise MetadataError(f"{PREFIX}ood must be a JSON object")
        method = data.get("method")
        if method not in OOD_METHODS:
            raise MetadataError(f"{PREFIX}ood.method must be one of {OOD_METHODS}, got {method!r}")
        output = data.get("output")
        if method == "mahalanobis" and not output:
            raise MetadataError(f"{PREFIX}ood.output must name the graph output for method mahalanobis")
        return cls(
            method=method,
            threshold=_number(data.get("threshold"), "ood.threshold"),
            accept_rate=_number(data.get("accept_rate", 0.95), "ood.accept_rate"),
            output=str(output) if output else None,
            fitted_on=str(data.get("fitted_on", "")),
            stats=dict(data.get("stats") or {}),
        )


@dataclass
class ModelMetadata:
    """Everything needed to feed a model and read its output, carried inside the file."""

    labels: list[str]
    preprocessing: Preprocessing
    model_name: str
    model_config: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    exported_at: str = ""
    outputs: dict[str, str | None] = field(default_factory=lambda: {"logits": "logits", "attention": None})
    precision: str = "fp32"
    optimizations: list[str] = field(default_factory=list)  # e.g. "ort-transformer-fusion"
    calibration: Calibration | None = None  # None: temperature 1
    ood: OodSpec | None = None  # None: no OOD score, nothing is "unknown"
    card: dict[str, Any] | None = None  # the model card's facts (vit/card.py)

    @property
    def has_attention(self) -> bool:
        return bool(self.outputs.get("attention"))

    def to_props(self) -> dict[str, str]:
        """Flat string map for ONNX ``metadata_props``."""
        values: dict[str, Any] = {
            "schema_version": str(SCHEMA_VERSION),
            "labels": json.dumps(list(self.labels)),
            "preprocessing": json.dumps(self.preprocessing.to_dict()),
            "model": json.dumps({"name": self.model_name, "config": self.model_config}),
            "versions": json.dumps(self.versions),
            "exported_at": self.exported_at,
            "weights_sha256": self.weights_sha256,
            "outputs": json.dumps(self.outputs),
            "precision": self.precision,
            "optimizations": json.dumps(list(self.optimizations)),
        }
        if self.calibration is not None:
            values["calibration"] = json.dumps(self.calibration.to_dict())
        if self.ood is not None:
            values["ood"] = json.dumps(self.ood.to_dict())
        if self.card is not None:
            values["card"] = json.dumps(self.card)
        return {PREFIX + key: value for key, value in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Parse ``metadata_props``; errors name the missing or malformed key."""
        values = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        missing = [PREFIX + k for k in REQUIRED_KEYS if k not in values]
        if missing:
            raise MetadataError(
                f"not a vit model file: metadata key(s) {', '.join(missing)} missing "
                "(export it with `vit export`)"
            )
        try:
            version = int(values["schema_version"])
        except ValueError as exc:
            raise MetadataError(
                f"{PREFIX}schema_version is not an integer: {values['schema_version']!r}"
            ) from exc
        if version > SCHEMA_VERSION:
            raise MetadataError(
                f"metadata schema version {version} is newer than this server understands ({SCHEMA_VERSION})"
            )

        def parse(key: str, default: Any = None) -> Any:
            if key not in values:
                return default
            try:
                return json.loads(values[key])
            except json.JSONDecodeError as exc:
                raise MetadataError(f"{PREFIX}{key} is not valid JSON: {exc}") from exc

        labels = parse("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise MetadataError(f"{PREFIX}labels must be a non-empty JSON list of strings")
        model = parse("model")
        try:
            preprocessing = Preprocessing.from_dict(parse("preprocessing"))
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{PREFIX}preprocessing: {exc}") from exc
        return cls(
            labels=labels,
            preprocessing=preprocessing,
            model_name=str(model.get("name", "")),
            model_config=dict(model.get("config") or {}),
            weights_sha256=values["weights_sha256"],
            versions=parse("versions", {}),
            exported_at=values.get("exported_at", ""),
            outputs=parse("outputs", {"logits": "logits", "attention": None}),
            precision=values.get("precision", "fp32"),
            optimizations=list(parse("optimizations", [])),
            calibration=Calibration.from_dict(parse("calibration")) if "calibration" in values else None,
            ood=OodSpec.from_dict(parse("ood")) if "ood" in values else None,
            card=parse("card") if "card" in values else None,
        )
