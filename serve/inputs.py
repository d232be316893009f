"""Request bodies -> image bytes -> model input: content types, limits, per-file error names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fastapi import Request
from PIL import Image
from starlette.datastructures import UploadFile

from serve.errors import ApiError
from serve.preprocess import DEFAULT_FORMATS, ImageError, Preprocessing, decode_image

FILE_FIELDS = ("file", "files")
# What /docs shows as the request body of /v1/classify and /v1/explain.
IMAGE_BODY_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                }
            },
        },
    }
}


@dataclass
class Upload:
    name: str
    data: bytes


@dataclass
class Prepared:
    """One decoded image: model input, and for explanations the picture and crop region."""

    array: np.ndarray
    image: Image.Image | None = None
    crop_box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


async def read_uploads(request: Request, max_images: int) -> tuple[list[Upload], bool]:
    """The images of a request and whether the answer is a list (several, or field ``files``)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        body = await request.body()
        if not body:
            raise ApiError(400, "empty_body", "request body is empty: send the image bytes")
        return [Upload("body", body)], False
    if content_type == "multipart/form-data":
        form = await request.form()
        try:
            parts = [(k, v) for k, v in form.multi_items() if k in FILE_FIELDS]
            if any(not isinstance(v, UploadFile) for _, v in parts):
                raise ApiError(
                    422, "missing_file", "multipart fields 'file' and 'files' must be file uploads"
                )
            if not parts:
                raise ApiError(422, "missing_file", "multipart body has no file in field 'file' or 'files'")
            check_count(len(parts), max_images)
            uploads = [
                Upload(v.filename or f"file {i + 1}", await v.read()) for i, (_, v) in enumerate(parts)
            ]
        finally:
            await form.close()
        many = len(uploads) > 1 or any(k == "files" for k, _ in parts)
        return uploads, many
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type {content_type or '(none)'} is not supported: send the image as the body with "
        "Content-Type image/* or application/octet-stream, or as multipart/form-data field 'file'/'files'",
    )


def check_count(count: int, max_images: int) -> None:
    """The one image-count limit of a request (v1 uploads and OIP tensors alike)."""
    if count > max_images:
        raise ApiError(413, "too_many_images", f"{count} images in one request; the limit is {max_images}")


def prepare(
    upload: Upload,
    preprocessing: Preprocessing,
    max_pixels: int,
    keep_image: bool,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
) -> Prepared:
    """Decode and preprocess one upload (runs in a thread)."""
    try:
        image = decode_image(upload.data, max_pixels=max_pixels, preprocessing=preprocessing, formats=formats)
    except ImageError as exc:
        # decode_image names bytes "image"; name the upload the client knows instead.
        message = str(exc).removeprefix("image: ")
        raise type(exc)(f"{upload.name}: {message}") from exc
    array = preprocessing(image)
    if not keep_image:
        return Prepared(array)
    return Prepared(array, image, preprocessing.crop_box(*image.size))
