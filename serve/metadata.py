"""The ONNX metadata schema: what ``vit export`` writes and ``serve`` reads (torch-free).

Every field is one entry of the ONNX model's ``metadata_props`` (string key -> string
value); structured values are JSON. Other tools can read them with
``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`` or
``onnx.load(path).metadata_props``.

Schema version 1 (keys are prefixed ``vit.``):

=====================  ==========================================================
key                    value
=====================  ==========================================================
vit.schema_version     ``"1"``
vit.labels             JSON list of class names, in output order
vit.preprocessing      JSON object, :meth:`serve.preprocess.Preprocessing.to_dict`
vit.model              JSON object ``{"name": timm name, "config": {...}}``
vit.versions           JSON object of framework versions at export (torch, timm, ...)
vit.exported_at        ISO-8601 UTC timestamp
vit.weights_sha256     SHA-256 of the exported weights (hex), the model's version
vit.outputs            JSON object ``{"logits": name, "attention": name or null}``
vit.precision          ``fp32`` | ``fp16`` | ``int8``
vit.optimizations      JSON list of the graph optimisations applied at export (optional)
=====================  ==========================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from serve.preprocess import Preprocessing

SCHEMA_VERSION = 1
PREFIX = "vit."
REQUIRED_KEYS = ("schema_version", "labels", "preprocessing", "model", "weights_sha256")


class MetadataError(ValueError):
    """The ONNX file lacks vit metadata or carries a version this code cannot read."""


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
        )
