"""Open Inference Protocol v2 (KServe / Triton) REST routes over the same engine and batcher.

Inputs: the model's FP32 image tensor ``[N, 3, H, W]`` (preprocessed exactly as
``Preprocessing`` does), or ``image_bytes``: BYTES ``[N]`` of encoded images, preprocessed
here. Tensors may come as JSON ``data`` or with Triton's binary tensor extension
(``Inference-Header-Content-Length``), which is what tritonclient sends by default. Outputs are
the model's raw outputs (``logits``, and ``attention`` when the file has it); an output may
ask for Triton's ``classification`` extension (``"score:index:label"`` strings).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from serve.engine import Engine, softmax
from serve.errors import ApiError
from serve.inputs import Upload
from serve.server import Server, ServerDep, require_key

BYTES_INPUT = "image_bytes"
DATATYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}
router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
keyed = [Depends(require_key)]


def bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _engine_for(server: Server, name: str) -> Engine:
    engine = server.current()
    if name != server.name:
        raise ApiError(404, "not_found", f"unknown model {name!r}; this server serves {server.name!r}")
    return engine


def _shape(dims: list[Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in dims]


def _params(holder: dict[str, Any], what: str) -> dict[str, Any]:
    params = holder.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad(f"{what} 'parameters' must be an object")
    return params


def _split_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES wire format: each element is a little-endian uint32 length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise bad("BYTES tensor is truncated")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise bad("BYTES tensor is truncated")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def _join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _parse(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """Split the JSON header from binary tensor data (Triton's binary tensor extension)."""
    try:
        cut = int(header_length) if header_length is not None else len(body)
        if not 0 <= cut <= len(body):
            raise ValueError(f"Inference-Header-Content-Length {cut} is outside the body")
        request = json.loads(body[:cut])
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"request is not valid JSON: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise bad("request needs a non-empty 'inputs' list")
    return request, body[cut:]


async def _images(
    server: Server, engine: Engine, tensor: dict[str, Any], raw: bytes | None
) -> list[np.ndarray]:
    """One input tensor -> per-image model input arrays."""
    name, datatype = tensor.get("name"), tensor.get("datatype")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if name == BYTES_INPUT:
        if datatype != "BYTES":
            raise bad(f"input {BYTES_INPUT!r} must be BYTES, got {datatype!r}")
        if raw is not None:
            blobs = _split_bytes(raw)
        else:
            try:  # JSON cannot hold binary: BYTES data are base64 strings here.
                blobs = [
                    base64.b64decode(s, validate=True) for s in np.asarray(tensor.get("data"), object).ravel()
                ]
            except (binascii.Error, TypeError, ValueError) as exc:
                raise bad(f"input {BYTES_INPUT!r}: JSON data must be base64 strings ({exc})") from exc
        if len(blobs) != int(np.prod(shape)) or not blobs:
            raise bad(f"input {BYTES_INPUT!r}: shape {shape} does not match {len(blobs)} elements")
        _check_count(server, len(blobs))
        uploads = [Upload(f"{BYTES_INPUT}[{i}]", blob) for i, blob in enumerate(blobs)]
        return [p.array for p in await server.prepare(engine, uploads)]
    if name != engine.input_name:
        raise bad(
            f"unknown input {name!r}; inputs are {engine.input_name!r} (FP32) and {BYTES_INPUT!r} (BYTES)"
        )
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise bad(f"input {name!r} must be one of {sorted(DATATYPES)}, got {datatype!r}")
    if len(shape) != 4 or tuple(shape[1:]) != engine.input_shape or shape[0] < 1:
        raise bad(f"input {name!r}: shape {shape} must be [N, {', '.join(map(str, engine.input_shape))}]")
    _check_count(server, shape[0])
    try:
        if raw is not None:
            array = np.frombuffer(raw, DATATYPES[datatype]).reshape(shape)
        else:
            array = np.asarray(tensor.get("data"), DATATYPES[datatype]).reshape(shape)
    except (ValueError, TypeError) as exc:
        raise bad(f"input {name!r}: data does not fit shape {shape} ({exc})") from exc
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise bad(f"input {name!r} contains NaN or infinity")
    return list(array)


def _check_count(server: Server, count: int) -> None:
    if count > server.settings.max_images:
        raise ApiError(
            413,
            "too_many_images",
            f"{count} images in one request; the limit is {server.settings.max_images}",
        )


def _output(name: str, array: np.ndarray, datatype: str, binary: bool) -> tuple[dict[str, Any], bytes]:
    spec: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        data = _join_bytes([s.encode() for s in array.ravel()]) if datatype == "BYTES" else array.tobytes()
        spec["parameters"] = {"binary_data_size": len(data)}
        return spec, data
    spec["data"] = [str(s) for s in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
    return spec, b""


def _classification(logits: np.ndarray, labels: list[str], k: int) -> np.ndarray:
    probs = softmax(logits)
    k = max(1, min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    rows = [[f"{probs[n, i]:f}:{i}:{labels[i]}" for i in row] for n, row in enumerate(order)]
    return np.asarray(rows, dtype=object)


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "vit-serve", "version": "1", "extensions": ["binary_tensor_data", "classification"]}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(server: ServerDep) -> JSONResponse:
    return JSONResponse({"ready": server.ready}, status_code=200 if server.ready else 503)


@router.get("/models/{name}", dependencies=keyed)
@router.get("/models/{name}/versions/{version}", dependencies=keyed)
async def model_metadata(name: str, server: ServerDep) -> dict[str, Any]:
    engine = _engine_for(server, name)
    outputs = {o.name: o for o in engine.session.get_outputs()}
    described = [
        {"name": engine.logits_name, "datatype": "FP32", "shape": _shape(outputs[engine.logits_name].shape)}
    ]
    if engine.attention_name:
        shape = _shape(outputs[engine.attention_name].shape)
        described.append({"name": engine.attention_name, "datatype": "FP32", "shape": shape})
    return {
        "name": server.name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": engine.input_name, "datatype": "FP32", "shape": [-1, *engine.input_shape]},
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": described,
    }


@router.get("/models/{name}/ready", dependencies=keyed)
@router.get("/models/{name}/versions/{version}/ready", dependencies=keyed)
async def model_ready(name: str, server: ServerDep) -> JSONResponse:
    if name != server.name:
        raise ApiError(404, "not_found", f"unknown model {name!r}; this server serves {server.name!r}")
    return JSONResponse({"name": name, "ready": server.ready}, status_code=200 if server.ready else 503)


@router.post("/models/{name}/infer", dependencies=keyed)
@router.post("/models/{name}/versions/{version}/infer", dependencies=keyed)
async def infer(name: str, request: Request, server: ServerDep) -> Response:
    """Run the model on an FP32 tensor or on encoded images (BYTES)."""
    return await server.within_deadline(_infer(name, request, server))


async def _infer(name: str, request: Request, server: Server) -> Response:
    engine = _engine_for(server, name)
    body = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    return await server.while_connected(request, _answer(server, engine, body, header_length))


async def _answer(server: Server, engine: Engine, body: bytes, header_length: str | None) -> Response:
    payload, binary = _parse(body, header_length)
    if len(payload["inputs"]) != 1:
        raise bad(f"expected exactly one input ({engine.input_name!r} or {BYTES_INPUT!r})")
    tensor = payload["inputs"][0]
    if not isinstance(tensor, dict):
        raise bad("each input must be an object")
    size = _params(tensor, "input").get("binary_data_size")
    if size is not None and (not isinstance(size, int) or not 0 <= size <= len(binary)):
        raise bad(f"binary_data_size {size!r} does not fit the {len(binary)} bytes after the JSON header")
    available = [engine.logits_name] + ([engine.attention_name] if engine.attention_name else [])
    requested = payload.get("outputs") or [{"name": n} for n in available]
    default_binary = bool(_params(payload, "request").get("binary_data_output", False))
    if not isinstance(requested, list):
        raise bad("'outputs' must be a list")
    for output in requested:
        if not isinstance(output, dict) or output.get("name") not in available:
            raise bad(f"unknown output {output!r}; outputs are {available}")
    arrays = await _images(server, engine, tensor, binary[:size] if size is not None else None)
    with_attention = any(o["name"] == engine.attention_name for o in requested)
    results = await server.batcher.submit(engine, arrays, with_attention=with_attention)

    specs, blobs = [], []
    for output in requested:
        params = _params(output, "output")
        binary_out = bool(params.get("binary_data", default_binary))
        logits = output["name"] == engine.logits_name
        array = np.stack([r.logits if logits else r.attention for r in results])
        classes = params.get("classification")
        if isinstance(classes, int) and classes > 0 and logits:
            spec, blob = _output(
                output["name"], _classification(array, engine.labels, classes), "BYTES", binary_out
            )
        else:
            spec, blob = _output(output["name"], array.astype(np.float32), "FP32", binary_out)
        specs.append(spec)
        blobs.append(blob)
    header = {"model_name": server.name, "model_version": "1", "outputs": specs}
    if "id" in payload:
        header["id"] = payload["id"]
    if not any(blobs):
        return JSONResponse(header)
    head = json.dumps(header).encode()
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
