"""The v1 routes: classify, explain, model description and reload. Each reads its request,
calls :meth:`serve.pipeline.Pipeline.run` and encodes the answers; nothing else."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import ValidationError

from serve.deps import Admin, Keyed, StateDep
from serve.engine import EngineError
from serve.errors import ApiError
from serve.inputs import IMAGE_BODY_OPENAPI, read_uploads
from serve.pipeline import Answer
from serve.schemas import ExplainAnswer, ImageAnswer, ModelInfo, Reloaded, ReloadRequest, errors
from serve.state import ServerState

log = logging.getLogger("serve")
router = APIRouter(prefix="/v1", tags=["v1"])
EXPORT_HINT = "export one with `vit export CKPT -o model.onnx --with-attention`"
MAX_RELOAD_BODY = 4096
OVERLAY_SIDE = 1024  # longest side of the /v1/explain PNG
IMAGE_ERRORS = errors(400, 401, 413, 415, 422, 499, 503, 504)

TopK = Annotated[
    int, Query(ge=1, le=1000, description="number of classes returned (clamped to the class count)")
]
RejectUnknown = Annotated[
    bool, Query(description="answer an empty prediction list for images flagged unknown")
]


def encode(name: str, answer: Answer, reject_unknown: bool) -> dict[str, Any]:
    """One answer as the JSON of :class:`serve.schemas.ImageAnswer`."""
    hide = reject_unknown and answer.unknown
    return {
        "model": name,
        "predictions": [] if hide else [p.as_dict() for p in answer.predictions],
        "ood_score": answer.ood_score,
        "unknown": answer.unknown,
    }


@router.post(
    "/classify",
    dependencies=Keyed,
    openapi_extra=IMAGE_BODY_OPENAPI,
    response_model=ImageAnswer | list[ImageAnswer],
    responses=IMAGE_ERRORS,
)
async def classify(
    request: Request, state: StateDep, top_k: TopK = 5, reject_unknown: RejectUnknown = False
) -> Response:
    """Top-k classes for one image (raw body) or several (multipart ``file``/``files``)."""
    return await classify_response(request, state, top_k, reject_unknown)


async def classify_response(
    request: Request, state: ServerState, top_k: int = 5, reject_unknown: bool = False
) -> Response:
    """The classify route's work, also run by :mod:`serve.fastpath` for plain requests."""
    engine = state.current()
    uploads, many = await read_uploads(request, state.settings.max_images)
    answers = await state.pipeline.run(engine, uploads, top_k=top_k)
    encoded = [encode(state.name, a, reject_unknown) for a in answers]
    return JSONResponse(encoded if many else encoded[0])


@router.post(
    "/explain",
    dependencies=Keyed,
    openapi_extra=IMAGE_BODY_OPENAPI,
    response_model=ExplainAnswer | list[ExplainAnswer],
    responses={**IMAGE_ERRORS, **errors(406, 409), 200: {"content": {"image/png": {}}}},
)
async def explain(
    request: Request, state: StateDep, top_k: TopK = 5, reject_unknown: RejectUnknown = False
) -> Response:
    """Predictions plus the attention map (JSON), or an overlay PNG with ``Accept: image/png``."""
    engine = state.current()
    if not engine.has_attention:
        raise ApiError(409, "no_attention", f"{engine.path.name} has no attention output; {EXPORT_HINT}")
    want_png = "image/png" in request.headers.get("accept", "")
    uploads, many = await read_uploads(request, state.settings.max_images)
    if want_png and len(uploads) != 1:
        raise ApiError(422, "invalid_parameter", "Accept: image/png needs exactly one image")
    answers = await state.pipeline.run(engine, uploads, top_k=top_k, attention=True, keep_image=True)
    loop = asyncio.get_running_loop()
    if want_png:
        png = await loop.run_in_executor(state.pool, overlay_png, answers[0])
        return Response(png, media_type="image/png")
    encoded = [
        {
            **encode(state.name, a, reject_unknown),
            "grid": a.result.attention.round(6).tolist(),
            "grid_size": list(a.result.attention.shape),
            "crop_box": [round(v, 6) for v in a.prepared.crop_box],
        }
        for a in answers
    ]
    return JSONResponse(encoded if many else encoded[0])


def overlay_png(answer: Answer) -> bytes:
    """The crop the model saw with the attention map blended on it, as PNG bytes."""
    from serve.render import overlay_heatmap, png_bytes  # numpy + PIL only

    image = answer.prepared.image
    left, top, right, bottom = answer.prepared.crop_box
    width, height = image.size
    view = image.crop(
        (round(left * width), round(top * height), round(right * width), round(bottom * height))
    )
    # Drawn at display size: blending and PNG-encoding a crop of the full source would cost
    # memory and seconds in proportion to the upload's pixels (up to --max-pixels).
    view.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return png_bytes(overlay_heatmap(view, answer.result.attention))


CLASSIFY_ROUTE = next(r for r in router.routes if getattr(r, "name", None) == "classify")


def describe(state: ServerState) -> dict[str, Any]:
    engine = state.current()
    settings = state.settings
    batching = {
        "max_batch_size": settings.max_batch_size,
        "max_wait_ms": settings.max_wait_ms,
        "instances": state.batcher.instances,
        "threads": engine.threads,
        "instance_threads": engine.instance_threads,
    }
    return {"name": state.name, **engine.describe(), "batching": batching}


@router.get("/model", dependencies=Keyed, response_model=ModelInfo, responses=errors(401, 503))
async def model(state: StateDep) -> dict[str, Any]:
    """What is served: name, version, labels, preprocessing, provider, batching."""
    return describe(state)


@router.post(
    "/admin/reload",
    tags=["admin"],
    dependencies=Admin,
    response_model=Reloaded,
    responses=errors(400, 401, 403, 413, 422, 503, 504),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": ReloadRequest.model_json_schema()}},
        }
    },
)
async def reload(request: Request, state: StateDep) -> dict[str, Any]:
    """Load the model file again (or ``{"path": ...}`` in the model directory), warm it, swap it in.

    The key is checked before the body is read (the dependency runs first: no body parameter).
    """
    body = await read_reload_body(request)
    try:
        await state.reload(body.path)
    except EngineError as exc:
        # One message whatever the cause (missing, outside the directory, not loadable): a
        # caller learns nothing about which paths exist. The log has the reason.
        target = body.path or "the model file"
        raise ApiError(
            422,
            "reload_failed",
            f"cannot load {target} from the model directory; still serving the previous model",
        ) from exc
    return {"status": "reloaded", **describe(state)}


async def read_reload_body(request: Request) -> ReloadRequest:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_RELOAD_BODY:
            raise ApiError(413, "body_too_large", f"a reload request is at most {MAX_RELOAD_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return ReloadRequest()
    try:
        return ReloadRequest.model_validate(json.loads(raw))
    except (ValueError, RecursionError, ValidationError) as exc:
        message = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not valid JSON"
        raise ApiError(
            400, "bad_request", f'reload body must be {{"path": "..."}} or empty: {message}'
        ) from None
