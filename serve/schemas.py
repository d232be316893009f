"""What every route returns, as pydantic models: the OpenAPI document is built from these.

Hot routes build their JSON directly (``JSONResponse``) and declare these models for the
document only: validating every answer again would cost more than the answer itself. A test
validates real answers against the models, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Prediction(BaseModel):
    """One class of an image's top-k: the same field names in `vit predict`, `vit eval` and the page."""

    label: str
    index: int = Field(description="class index in the model's output order")
    score: float = Field(description="calibrated probability of this class")


class ImageAnswer(BaseModel):
    """One image's answer from ``/v1/classify``."""

    model: str
    predictions: list[Prediction] = Field(description="best first; empty when rejected as unknown")
    ood_score: float | None = Field(
        None,
        description="out-of-distribution score, higher = less like the training data (null: no OOD data)",
    )
    unknown: bool = Field(False, description="the image looks like none of the known classes")


class ExplainAnswer(ImageAnswer):
    """``/v1/explain``: the answer plus the attention map over the crop the model saw."""

    grid: list[list[float]] = Field(description="attention map, rows x cols, non-negative, summing to 1")
    grid_size: list[int]
    crop_box: list[float] = Field(description="[left, top, right, bottom] as fractions of the uploaded image")


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable name, e.g. image_too_large")
    message: str


class ErrorBody(BaseModel):
    """Every v1 error."""

    error: ErrorDetail


class OipError(BaseModel):
    """Every Open Inference Protocol (v2) error, the shape that protocol prescribes."""

    error: str


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: str


class Batching(BaseModel):
    max_batch_size: int
    max_wait_ms: float
    instances: int
    threads: int = Field(description="intra-op threads of a lone request's call")
    instance_threads: int = Field(description="intra-op threads of each instance's batch call")


class ModelInput(BaseModel):
    name: str
    shape: list[int]
    dtype: str


class ModelInfo(BaseModel):
    """``GET /v1/model``: what is served and how."""

    name: str
    model_name: str
    version: str
    weights_sha256: str
    file_sha256: str
    labels: list[str]
    num_classes: int
    input: ModelInput
    input_size: list[int]
    preprocessing: dict[str, Any]
    precision: str
    has_attention: bool
    provider: str
    providers: list[str]
    exported_at: str
    versions: dict[str, str]
    load_seconds: float
    run_batch_size: int | None
    trust: dict[str, Any] = Field(description="temperature, OOD method, threshold and accept rate")
    batching: Batching | None = None


class Reloaded(ModelInfo):
    status: str


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="another file in the model directory (default: the same file)")


def errors(*statuses: int, oip: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry of a route that can answer these error statuses."""
    model = OipError if oip else ErrorBody
    return {status: {"model": model} for status in statuses}
