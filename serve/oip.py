"""Open Inference Protocol v2 (KServe / Triton) REST routes over the same pipeline.

Inputs: the model's FP32 image tensor ``[N, 3, H, W]`` (preprocessed exactly as
``Preprocessing`` does), or ``image_bytes``: BYTES ``[N]`` of encoded images, decoded by the
pipeline. Tensors may come as JSON ``data`` or with Triton's binary tensor extension
(``Inference-Header-Content-Length``), which is what tritonclient sends by default. Outputs are
the model's raw outputs (``logits``, and ``attention`` when the file has it); an output may
ask for Triton's ``classification`` extension (``"score:index:label"`` strings, calibrated).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from serve.deps import Keyed, StateDep
from serve.engine import Engine
from serve.errors import ApiError
from serve.inputs import Upload, check_count
from serve.oip_wire import (
    BYTES_INPUT,
    OutputSpec,
    bad,
    encode_output,
    encode_response,
    image_blobs,
    image_tensor,
    output_specs,
    params,
    parse,
)
from serve.pipeline import Answer
from serve.schemas import errors
from serve.state import ServerState

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
OIP_ERRORS = errors(400, 401, 404, 413, 415, 422, 499, 503, 504, oip=True)


class TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadataV2(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Live(BaseModel):
    live: bool


class ModelReady(BaseModel):
    name: str | None = None
    ready: bool


class InferInput(BaseModel):
    name: str = Field(
        description=f"the model's image input (FP32 [N, 3, H, W]) or {BYTES_INPUT!r} (BYTES [N])"
    )
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput]
    outputs: list[InferOutput] | None = None
    parameters: dict[str, Any] | None = None


class InferOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]


def _known(state: ServerState, name: str) -> None:
    """``/v2/models/{name}`` exists only for the one name this server serves: else 404."""
    if name != state.name:
        raise ApiError(404, "not_found", f"unknown model {name!r}; this server serves {state.name!r}")


def _engine_for(state: ServerState, name: str) -> Engine:
    _known(state, name)
    return state.current()


def _shape(dims: list[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in dims]


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> dict[str, Any]:
    return {"name": "vit-serve", "version": "1", "extensions": ["binary_tensor_data", "classification"]}


@router.get("/health/live", response_model=Live)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", response_model=ModelReady, responses={503: {"model": ModelReady}})
async def ready(state: StateDep) -> JSONResponse:
    return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)


@router.get("/models/{name}", dependencies=Keyed, response_model=ModelMetadataV2, responses=OIP_ERRORS)
@router.get(
    "/models/{name}/versions/{version}",
    dependencies=Keyed,
    response_model=ModelMetadataV2,
    responses=OIP_ERRORS,
)
async def model_metadata(name: str, state: StateDep, version: str | None = None) -> dict[str, Any]:
    engine = _engine_for(state, name)
    outputs = {o.name: o for o in engine.session.get_outputs()}
    described = [
        {"name": n, "datatype": "FP32", "shape": _shape(outputs[n].shape)} for n in _available(engine)
    ]
    return {
        "name": state.name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": engine.input_name, "datatype": "FP32", "shape": [-1, *engine.input_shape]},
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": described,
    }


READY_ANSWERS = {**errors(400, 401, 404, 422, oip=True), 503: {"model": ModelReady}}


@router.get("/models/{name}/ready", dependencies=Keyed, response_model=ModelReady, responses=READY_ANSWERS)
@router.get(
    "/models/{name}/versions/{version}/ready",
    dependencies=Keyed,
    response_model=ModelReady,
    responses=READY_ANSWERS,
)
async def model_ready(name: str, state: StateDep, version: str | None = None) -> JSONResponse:
    _known(state, name)
    return JSONResponse({"name": name, "ready": state.ready}, status_code=200 if state.ready else 503)


REF_TEMPLATE = "#/components/schemas/{model}"


def component_schemas() -> dict[str, Any]:
    """The infer request's schema and the models it refers to, for the document's components."""
    schema = InferRequest.model_json_schema(ref_template=REF_TEMPLATE)
    return {**schema.pop("$defs", {}), "InferRequest": schema}


INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="InferRequest")}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header of Inference-Header-Content-Length bytes, then binary tensors",
            },
        },
    }
}


@router.post(
    "/models/{name}/infer",
    dependencies=Keyed,
    response_model=InferResponse,
    responses=OIP_ERRORS,
    openapi_extra=INFER_BODY,
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    dependencies=Keyed,
    response_model=InferResponse,
    responses=OIP_ERRORS,
    openapi_extra=INFER_BODY,
)
async def infer(name: str, request: Request, state: StateDep, version: str | None = None) -> Response:
    """Run the model on an FP32 tensor or on encoded images (BYTES)."""
    engine = _engine_for(state, name)
    body = await request.body()
    loop = asyncio.get_running_loop()
    header_length = request.headers.get("inference-header-content-length")
    # Parsing, tensor conversion and encoding scale with the body: off the event loop.
    payload, binary = await loop.run_in_executor(state.pool, parse, body, header_length)
    tensor, raw = _input(payload, binary, engine)
    specs = output_specs(payload, _available(engine), state.settings.max_outputs)
    limit = state.settings.max_images
    if tensor.get("name") == BYTES_INPUT:
        blobs = image_blobs(tensor, raw, limit)
        items: list[Any] = [Upload(f"{BYTES_INPUT}[{i}]", blob) for i, blob in enumerate(blobs)]
    else:
        if tensor.get("name") != engine.input_name:
            raise bad(
                f"unknown input {str(tensor.get('name'))[:80]!r}; inputs are {engine.input_name!r} (FP32) "
                f"and {BYTES_INPUT!r} (BYTES)"
            )
        shape = tensor.get("shape")
        check_count(shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) else 0, limit)
        items = list(await loop.run_in_executor(state.pool, image_tensor, tensor, raw, engine.input_shape))
    attention = any(spec.name == engine.attention_name for spec in specs)
    top_k = max([spec.classes for spec in specs] + [1])
    answers = await state.pipeline.run(engine, items, top_k=top_k, attention=attention)
    header = {"model_name": state.name, "model_version": "1"}
    if "id" in payload:
        header["id"] = payload["id"]
    content, media_type, headers = await loop.run_in_executor(
        state.pool, _encode, header, specs, answers, engine
    )
    return Response(content, media_type=media_type, headers=headers)


def _available(engine: Engine) -> list[str]:
    return [engine.logits_name] + ([engine.attention_name] if engine.attention_name else [])


def _input(payload: dict[str, Any], binary: bytes, engine: Engine) -> tuple[dict[str, Any], bytes | None]:
    """The one input tensor and its binary data, if it came with the binary extension."""
    if len(payload["inputs"]) != 1:
        raise bad(f"expected exactly one input ({engine.input_name!r} or {BYTES_INPUT!r})")
    tensor = payload["inputs"][0]
    if not isinstance(tensor, dict):
        raise bad("each input must be an object")
    size = params(tensor, "input").get("binary_data_size")
    if size is not None and (
        not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary)
    ):
        raise bad(
            f"binary_data_size {str(size)[:40]!r} does not fit the {len(binary)} bytes after the JSON header"
        )
    return tensor, (binary[:size] if size is not None else None)


def _encode(
    header: dict[str, Any], specs: list[OutputSpec], answers: list[Answer], engine: Engine
) -> tuple[bytes, str, dict[str, str]]:
    outputs, blobs = [], []
    for spec in specs:
        if spec.name == engine.logits_name and spec.classes:
            rows = [
                [f"{p.score:f}:{p.index}:{p.label}" for p in a.predictions[: spec.classes]] for a in answers
            ]
            output, blob = encode_output(spec.name, np.asarray(rows, dtype=object), "BYTES", spec.binary)
        else:
            logits = spec.name == engine.logits_name
            array = np.stack([a.result.logits if logits else a.result.attention for a in answers])
            output, blob = encode_output(spec.name, array.astype(np.float32), "FP32", spec.binary)
        outputs.append(output)
        blobs.append(blob)
    return encode_response({**header, "outputs": outputs}, blobs)
