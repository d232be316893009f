"""Open Inference Protocol v2 on the wire: the JSON header, Triton's binary tensor extension,
BYTES elements, and output encoding. Pure functions, bounded by the settings' limits."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.errors import ApiError
from serve.inputs import check_count

BYTES_INPUT = "image_bytes"
DATATYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}


def bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


@dataclass
class OutputSpec:
    """One requested output: its name, binary or JSON, and Triton's ``classification`` count."""

    name: str
    binary: bool
    classes: int = 0


def params(holder: dict[str, Any], what: str) -> dict[str, Any]:
    found = holder.get("parameters") or {}
    if not isinstance(found, dict):
        raise bad(f"{what} 'parameters' must be an object")
    return found


def parse(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """Split the JSON header from binary tensor data; a parser error is 400, never 500."""
    try:
        cut = int(header_length) if header_length is not None else len(body)
        if not 0 <= cut <= len(body):
            raise ValueError(f"Inference-Header-Content-Length {cut} is outside the body")
        request = json.loads(body[:cut])
    except RecursionError:
        raise bad("request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"request is not valid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise bad("request needs a non-empty 'inputs' list")
    return request, body[cut:]


def output_specs(payload: dict[str, Any], available: list[str], limit: int) -> list[OutputSpec]:
    """The requested outputs (default: all), each named once and at most ``limit`` of them."""
    requested = payload.get("outputs") or [{"name": n} for n in available]
    if not isinstance(requested, list):
        raise bad("'outputs' must be a list")
    if len(requested) > limit:
        raise bad(f"{len(requested)} outputs requested; the limit is {limit}")
    default_binary = bool(params(payload, "request").get("binary_data_output", False))
    specs, seen = [], set()
    for output in requested:
        if not isinstance(output, dict) or output.get("name") not in available:
            raise bad(f"unknown output {str(output)[:80]!r}; outputs are {available}")
        if output["name"] in seen:
            raise bad(f"output {output['name']!r} is requested twice")
        seen.add(output["name"])
        options = params(output, "output")
        classes = options.get("classification")
        count = classes if isinstance(classes, int) and not isinstance(classes, bool) and classes > 0 else 0
        specs.append(OutputSpec(output["name"], bool(options.get("binary_data", default_binary)), count))
    return specs


def split_bytes(raw: bytes) -> list[bytes]:
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


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def check_shape(name: Any, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise bad(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return shape


def image_blobs(tensor: dict[str, Any], raw: bytes | None, max_images: int) -> list[bytes]:
    """The encoded images of a BYTES ``image_bytes`` tensor (binary, or base64 in JSON)."""
    shape = check_shape(BYTES_INPUT, tensor.get("shape"))
    if tensor.get("datatype") != "BYTES":
        raise bad(f"input {BYTES_INPUT!r} must be BYTES, got {tensor.get('datatype')!r}")
    check_count(int(np.prod(shape)), max_images)
    if raw is not None:
        blobs = split_bytes(raw)
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise bad(f"input {BYTES_INPUT!r}: JSON data must be a list of base64 strings")
        try:  # JSON cannot hold binary: BYTES data are base64 strings here.
            blobs = [base64.b64decode(s, validate=True) for s in np.asarray(data, object).ravel()]
        except (binascii.Error, TypeError, ValueError) as exc:
            raise bad(f"input {BYTES_INPUT!r}: JSON data must be base64 strings ({exc})") from None
    if len(blobs) != int(np.prod(shape)) or not blobs:
        raise bad(f"input {BYTES_INPUT!r}: shape {shape} does not match {len(blobs)} elements")
    return blobs


def image_tensor(tensor: dict[str, Any], raw: bytes | None, input_shape: tuple[int, ...]) -> np.ndarray:
    """An FP32/FP16/FP64 ``[N, 3, H, W]`` tensor as float32 (runs in a thread: it may be large)."""
    name, datatype = tensor.get("name"), tensor.get("datatype")
    shape = check_shape(name, tensor.get("shape"))
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise bad(f"input {name!r} must be one of {sorted(DATATYPES)}, got {datatype!r}")
    if len(shape) != 4 or tuple(shape[1:]) != input_shape or shape[0] < 1:
        raise bad(f"input {name!r}: shape {shape} must be [N, {', '.join(map(str, input_shape))}]")
    try:
        if raw is not None:
            array = np.frombuffer(raw, DATATYPES[datatype]).reshape(shape)
        else:
            array = np.asarray(tensor.get("data"), DATATYPES[datatype]).reshape(shape)
    except (ValueError, TypeError, RecursionError) as exc:
        raise bad(f"input {name!r}: data does not fit shape {shape} ({type(exc).__name__})") from None
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise bad(f"input {name!r} contains NaN or infinity")
    return array


def encode_output(name: str, array: np.ndarray, datatype: str, binary: bool) -> tuple[dict[str, Any], bytes]:
    spec: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        data = join_bytes([s.encode() for s in array.ravel()]) if datatype == "BYTES" else array.tobytes()
        spec["parameters"] = {"binary_data_size": len(data)}
        return spec, data
    spec["data"] = [str(s) for s in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
    return spec, b""


def encode_response(header: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, str, dict[str, str]]:
    """The body, media type and headers of an infer response (JSON, or JSON + binary tensors)."""
    head = json.dumps(header).encode()
    if not any(blobs):
        return head, "application/json", {}
    return (
        head + b"".join(blobs),
        "application/octet-stream",
        {"Inference-Header-Content-Length": str(len(head))},
    )
