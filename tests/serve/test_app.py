"""serve/app.py contract: every /v1 route, the page, metrics, and every client error (in-process)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serve.engine import Engine
from serve.preprocess import decode_image
from serve.trust import softmax, top_k
from tests.serve.conftest import GRID, LABELS, build_model, image_bytes

PNG = {"content-type": "image/png"}
MakeClient = Callable[..., TestClient]


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


def expected_scores(model: Path, data: bytes) -> list[tuple[str, float]]:
    """Single-image inference straight through the engine: the reference for every answer."""
    engine = Engine(model, device="cpu", threads=1)
    pre = engine.metadata.preprocessing
    logits = engine.infer(pre(decode_image(data, preprocessing=pre))[None]).logits[0]
    return [(p.label, p.score) for p in top_k(softmax(logits[None])[0], engine.labels, 3)]


def answer_scores(answer: dict) -> list[tuple[str, float]]:
    return [(p["label"], p["score"]) for p in answer["predictions"]]


def assert_same(answer: dict, expected: list[tuple[str, float]]) -> None:
    got = answer_scores(answer)
    assert [label for label, _ in got] == [label for label, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-4, atol=1e-6)


# --- health, model, page, docs ------------------------------------------------------------


def test_health_ready_and_model(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "tiny"}
    model = client.get("/v1/model").json()
    assert model["name"] == "tiny" and model["labels"] == LABELS
    assert model["input_size"] == [32, 32] and model["preprocessing"]["input_size"] == [32, 32]
    assert model["provider"] == "CPUExecutionProvider" and len(model["version"]) == 12
    assert model["has_attention"] is False
    assert model["batching"]["instances"] == 2  # the CPU default
    assert model["batching"]["threads"] == 1 and model["batching"]["instance_threads"] == 1


def test_page_and_static_files_are_local(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
        assert asset in page.text
    assert "://" not in page.text.replace("http-equiv", "")  # no CDN: nothing from elsewhere


def test_openapi_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"image/*", "multipart/form-data"} <= set(body)
    assert "/v2/models/{name}/infer" in spec["paths"]


# --- classify ---------------------------------------------------------------------------


@pytest.mark.parametrize("colour", ["cat", "dog", "bird"])
def test_classify_raw_body(client: TestClient, tiny_model: Path, colour: str) -> None:
    data = image_bytes(colour)
    response = client.post("/v1/classify", content=data, headers=PNG)
    assert response.status_code == 200
    answer = response.json()
    assert answer["model"] == "tiny" and answer["predictions"][0]["label"] == colour
    assert answer["predictions"][0]["index"] == LABELS.index(colour)
    assert_same(answer, expected_scores(tiny_model, data))


def test_top_k_default_clamp_and_order(client: TestClient) -> None:
    data = image_bytes("dog")
    default = client.post("/v1/classify", content=data, headers={"content-type": "application/octet-stream"})
    assert len(default.json()["predictions"]) == 3  # default 5, clamped to 3 classes
    scores = [p["score"] for p in default.json()["predictions"]]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0)
    assert len(client.post("/v1/classify?top_k=1", content=data, headers=PNG).json()["predictions"]) == 1
    assert len(client.post("/v1/classify?top_k=1000", content=data, headers=PNG).json()["predictions"]) == 3


def test_multipart_single_and_several_in_order(client: TestClient) -> None:
    one = client.post("/v1/classify", files={"file": ("a.png", image_bytes("bird"), "image/png")})
    assert isinstance(one.json(), dict) and one.json()["predictions"][0]["label"] == "bird"
    colours = ["dog", "bird", "cat", "dog"]
    files = [("files", (f"{i}.png", image_bytes(c), "image/png")) for i, c in enumerate(colours)]
    several = client.post("/v1/classify?top_k=1", files=files).json()
    assert [r["predictions"][0]["label"] for r in several] == colours
    listed = client.post("/v1/classify", files=[("files", ("x.png", image_bytes("cat"), "image/png"))]).json()
    assert isinstance(listed, list) and len(listed) == 1  # field `files` always answers a list


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 36), rgb) for rgb in ((230, 20, 20), (20, 20, 230))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    image = Image.new("RGB", (60, 30), (20, 230, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display upright
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((36, 40), 40000, np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "label"),
    [
        ("jpeg", lambda: image_bytes("bird", fmt="JPEG"), "bird"),
        ("grayscale", lambda: image_bytes("cat", mode="L"), None),
        ("rgba", lambda: image_bytes("dog", mode="RGBA"), "dog"),
        ("cmyk", lambda: image_bytes("bird", fmt="JPEG", mode="CMYK"), "bird"),
        ("16-bit", sixteen_bit_png, None),
        ("exif-rotated", exif_rotated_jpeg, "dog"),
        ("animated-first-frame", animated_gif, "cat"),
    ],
)
def test_image_kinds(
    client: TestClient, tiny_model: Path, name: str, make: Callable[[], bytes], label: str | None
) -> None:
    data = make()
    response = client.post("/v1/classify", content=data, headers={"content-type": "image/x-any"})
    assert response.status_code == 200, (name, response.text)
    predictions = response.json()["predictions"]
    if label:
        assert predictions[0]["label"] == label
    # Served exactly as the one preprocessing definition feeds the model directly.
    engine = Engine(tiny_model, device="cpu", threads=1)
    image = decode_image(data, preprocessing=engine.metadata.preprocessing)
    logits = engine.infer(engine.metadata.preprocessing(image)[None]).logits[0]
    expected = top_k(softmax(logits[None])[0], engine.labels, 5)
    assert [p["label"] for p in predictions] == [p.label for p in expected]
    assert [p["score"] for p in predictions] == pytest.approx([p.score for p in expected], abs=1e-6)


# --- errors -------------------------------------------------------------------------------


def test_undecodable_image_is_400_naming_the_file(client: TestClient) -> None:
    raw = client.post("/v1/classify", content=b"definitely not an image", headers=PNG)
    assert raw.status_code == 400 and error_of(raw)["code"] == "invalid_image"
    files = [
        ("files", ("good.png", image_bytes(), "image/png")),
        ("files", ("broken.jpg", b"\xff\xd8junk", "image/jpeg")),
    ]
    named = client.post("/v1/classify", files=files)
    assert named.status_code == 400 and "broken.jpg" in error_of(named)["message"]
    empty = client.post("/v1/classify", content=b"", headers=PNG)
    assert empty.status_code == 400 and error_of(empty)["code"] == "empty_body"


def test_body_over_limit_is_413(make_client: MakeClient, tiny_model: Path) -> None:
    client = make_client(tiny_model, max_body_bytes=2_000)
    big = image_bytes("cat", size=(400, 400), fmt="BMP")
    declared = client.post("/v1/classify", content=big, headers=PNG)
    assert declared.status_code == 413 and error_of(declared)["code"] == "body_too_large"
    streamed = client.post("/v1/classify", content=iter([big[:1500], big[1500:]]), headers=PNG)  # chunked
    assert streamed.status_code == 413 and error_of(streamed)["code"] == "body_too_large"
    assert client.post("/v1/classify", content=image_bytes("cat"), headers=PNG).status_code == 200


def test_decompression_bomb_is_413(make_client: MakeClient, tiny_model: Path) -> None:
    client = make_client(tiny_model, max_pixels=1_000)
    response = client.post("/v1/classify", content=image_bytes("cat", size=(40, 36)), headers=PNG)
    assert response.status_code == 413 and error_of(response)["code"] == "image_too_large"


def test_too_many_images_is_413(make_client: MakeClient, tiny_model: Path) -> None:
    client = make_client(tiny_model, max_images=2)
    files = [("files", (f"{i}.png", image_bytes(), "image/png")) for i in range(3)]
    response = client.post("/v1/classify", files=files)
    assert response.status_code == 413 and error_of(response)["code"] == "too_many_images"


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
def test_unsupported_type_is_415(client: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/classify", content=image_bytes(), headers=headers)
    assert response.status_code == 415 and error_of(response)["code"] == "unsupported_media_type"


@pytest.mark.parametrize("query", ["top_k=0", "top_k=-3", "top_k=abc", "top_k=1.5"])
def test_bad_parameters_are_422(client: TestClient, query: str) -> None:
    response = client.post(f"/v1/classify?{query}", content=image_bytes(), headers=PNG)
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_parameter" and "top_k" in error_of(response)["message"]


def test_multipart_without_file_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/classify", data={"note": "no file"}, files={"other": ("a.png", b"x", "image/png")}
    )
    assert response.status_code == 422 and error_of(response)["code"] == "missing_file"


def test_api_key(make_client: MakeClient, tiny_model: Path) -> None:
    client = make_client(tiny_model, api_key="s3cret")
    missing = client.post("/v1/classify", content=image_bytes(), headers=PNG)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert error_of(missing)["code"] == "unauthorized"
    wrong = client.get("/v1/model", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong" in error_of(wrong)["message"]
    assert (
        client.post("/v1/classify", content=image_bytes(), headers={**PNG, "X-API-Key": "s3cret"}).status_code
        == 200
    )
    assert client.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    for open_route in ("/healthz", "/readyz", "/metrics", "/", "/v2/health/live", "/v2/health/ready"):
        assert client.get(open_route).status_code == 200, open_route


def test_not_ready_is_503_with_retry_after(tmp_path: Path) -> None:
    from serve.app import create_app
    from serve.settings import Settings

    app = create_app(Settings(model=tmp_path / "missing.onnx", access_log=False), background_load=True)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        for response in (
            client.get("/readyz"),
            client.post("/v1/classify", content=image_bytes(), headers=PNG),
        ):
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert (
                error_of(response)["code"] == "not_ready" and "missing.onnx" in error_of(response)["message"]
            )
        assert client.get("/v2/health/ready").status_code == 503


def test_full_queue_is_503_overloaded(make_client: MakeClient, tiny_model: Path) -> None:
    client = make_client(tiny_model, max_queue=1)
    files = [("files", (f"{i}.png", image_bytes(), "image/png")) for i in range(2)]
    response = client.post("/v1/classify", files=files)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert error_of(response)["code"] == "overloaded"


def test_request_timeout_is_504(make_client: MakeClient, tiny_model: Path) -> None:
    client = make_client(tiny_model, request_timeout_s=0.2)

    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()

    batcher = client.app.state.server.batcher
    batcher.submit = batcher.alone = never  # queued or on the idle path: never answered
    response = client.post("/v1/classify", content=image_bytes(), headers=PNG)
    assert response.status_code == 504 and error_of(response)["code"] == "timeout"


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    assert error_of(client.get("/nope"))["code"] == "not_found"
    response = client.get("/v1/classify")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def test_nothing_a_client_sends_is_a_500(client: TestClient) -> None:
    rng = random.Random(0)
    jpeg = image_bytes("cat", fmt="JPEG")
    bodies = [
        jpeg[: len(jpeg) // 2],
        jpeg[:20],
        bytes(rng.randrange(256) for _ in range(3000)),
        b"GIF89a",
        b"\x89PNG\r\n\x1a\n",
    ]
    for body in bodies:
        for content_type in (
            "image/jpeg",
            "application/octet-stream",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
        ):
            for route in ("/v1/classify", "/v1/explain", "/v2/models/tiny/infer"):
                response = client.post(route, content=body, headers={"content-type": content_type})
                assert response.status_code < 500 or response.status_code == 503, (
                    route,
                    content_type,
                    response.text,
                )
    assert client.get("/readyz").status_code == 200


# --- batching, metrics, access log ---------------------------------------------------------


def test_concurrent_requests_are_batched_and_match_single_inference(
    make_client: MakeClient, tiny_model: Path
) -> None:
    # One instance, batches of up to 4 (not the measured size, which may be 1 on this machine);
    # hold the first batch inside the model so the next four requests meet in the queue.
    client = make_client(tiny_model, instances=1, run_batch_size=4)
    server = client.app.state.server
    engine, gate = server.engine, threading.Event()
    original = engine.infer
    engine.infer = lambda *args, **kwargs: (gate.wait(30), original(*args, **kwargs))[1]
    colours = ["cat", "dog", "bird", "dog", "bird"]
    payloads = [image_bytes(c, size=(40 + i, 36)) for i, c in enumerate(colours)]

    def post(data: bytes):
        return client.post("/v1/classify", content=data, headers=PNG)

    def wait_depth(depth: int) -> None:
        while server.batcher.depth < depth:  # poll a condition, not a duration
            time.sleep(0.005)

    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(post, payloads[0])
        wait_depth(1)
        rest = [pool.submit(post, data) for data in payloads[1:]]
        wait_depth(5)
        gate.set()
        responses = [first.result(), *(f.result() for f in rest)]
    for response, data in zip(responses, payloads, strict=True):
        assert response.status_code == 200
        assert_same(response.json(), expected_scores(tiny_model, data))
    metrics = client.get("/metrics").text
    assert (
        'vit_batch_size_bucket{le="1.0"} 1.0' in metrics and 'vit_batch_size_bucket{le="4.0"} 2.0' in metrics
    )
    assert 'vit_batch_size_bucket{le="2.0"} 1.0' in metrics  # the four ran as one batch


def test_metrics_series(client: TestClient) -> None:
    client.post("/v1/classify", content=image_bytes(), headers=PNG)
    client.post("/v1/classify", content=b"junk", headers=PNG)
    text = client.get("/metrics").text
    assert 'vit_requests_total{method="POST",route="/v1/classify",status="200"} 1.0' in text
    assert 'vit_requests_total{method="POST",route="/v1/classify",status="400"} 1.0' in text
    for series in (
        "vit_request_duration_seconds_bucket",
        "vit_batch_size_count",
        "vit_queue_depth",
        "vit_model_load_seconds",
        "vit_images_total",
        "vit_model_info",
    ):
        assert series in text, series


def test_access_log_is_json_lines(
    make_client: MakeClient, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(tiny_model, access_log=True)
    with caplog.at_level(logging.INFO, logger="serve.access"):
        client.post("/v1/classify", content=b"junk", headers=PNG)
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "serve.access"]
    assert records and records[-1]["status"] == 400 and records[-1]["route"] == "/v1/classify"
    assert records[-1]["bytes_in"] == 4 and records[-1]["ms"] >= 0


# --- explain -------------------------------------------------------------------------------


def spot_image() -> bytes:
    """Dark image with a bright top-left corner: attention must peak in the top-left cell."""
    pixels = np.full((64, 64, 3), 10, np.uint8)
    pixels[:16, :16] = 250
    pixels[..., 0] = np.maximum(pixels[..., 0], 60)  # red dominant overall
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_explain_json(attention_client: TestClient, attention_model: Path) -> None:
    data = spot_image()
    answer = attention_client.post("/v1/explain", content=data, headers=PNG).json()
    assert_same(answer, expected_scores(attention_model, data))
    grid = np.array(answer["grid"])
    assert answer["grid_size"] == [GRID, GRID] and grid.shape == (GRID, GRID)
    assert grid.sum() == pytest.approx(1.0, abs=1e-4) and np.unravel_index(grid.argmax(), grid.shape) == (
        0,
        0,
    )
    left, top, right, bottom = answer["crop_box"]
    assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
    several = attention_client.post("/v1/explain", files=[("files", ("a.png", data, "image/png"))] * 2).json()
    assert len(several) == 2 and several[0]["grid"] == answer["grid"]


def test_explain_crop_box_follows_exif_orientation(attention_client: TestClient) -> None:
    answer = attention_client.post(
        "/v1/explain", content=exif_rotated_jpeg(), headers={"content-type": "image/jpeg"}
    ).json()
    left, top, right, bottom = answer["crop_box"]
    assert top > 3 * left and bottom < right  # upright it is portrait: the crop cuts more from top/bottom


def test_explain_png(attention_client: TestClient) -> None:
    response = attention_client.post(
        "/v1/explain", content=spot_image(), headers={**PNG, "Accept": "image/png"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.mode == "RGB" and overlay.size[0] > 0
    two = [("files", ("a.png", spot_image(), "image/png"))] * 2
    refused = attention_client.post("/v1/explain", files=two, headers={"Accept": "image/png"})
    assert refused.status_code == 422


def test_explain_without_attention_output_is_409(client: TestClient) -> None:
    response = client.post("/v1/explain", content=image_bytes(), headers=PNG)
    assert response.status_code == 409 and error_of(response)["code"] == "no_attention"
    assert "vit export CKPT -o model.onnx --with-attention" in error_of(response)["message"]


# --- reload --------------------------------------------------------------------------------


def test_reload_needs_a_configured_key(client: TestClient) -> None:
    response = client.post("/v1/admin/reload")
    assert response.status_code == 403 and "--api-key" in error_of(response)["message"]


def test_reload_under_load_loses_no_request(
    make_client: MakeClient, tiny_model: Path, model_dir: Path
) -> None:
    renamed = build_model(model_dir / "renamed.onnx", labels=["kot", "pies", "ptak"], gain=6.0)
    client = make_client(tiny_model, api_key="k", max_wait_ms=1)
    key = {"X-API-Key": "k"}
    assert client.post("/v1/admin/reload", json={"path": str(renamed)}).status_code == 401

    def post(i: int) -> dict:
        response = client.post(
            "/v1/classify?top_k=1", content=image_bytes("dog", size=(40 + i % 7, 36)), headers={**PNG, **key}
        )
        assert response.status_code == 200, response.text
        return response.json()

    answered = threading.Event()
    reloaded = threading.Event()

    def keep_posting(worker: int) -> list[dict]:
        # Posts until the reload has returned, and once more: requests run before, during and
        # after the swap, so the reload overlaps them by construction.
        answers = []
        for i in itertools.count():
            done = reloaded.is_set()
            answers.append(post(worker * 7 + i))
            answered.set()
            if done:
                return answers

    with ThreadPoolExecutor(4) as pool:
        load = [pool.submit(keep_posting, worker) for worker in range(3)]
        assert answered.wait(30)
        swapped = client.post("/v1/admin/reload", json={"path": str(renamed)}, headers=key)
        reloaded.set()
        answers = [a for future in load for a in future.result()]
    assert swapped.status_code == 200 and swapped.json()["labels"] == ["kot", "pies", "ptak"]
    assert {a["predictions"][0]["label"] for a in answers} == {"dog", "pies"}  # both models answered
    assert post(0)["predictions"][0]["label"] == "pies"
    assert post(0)["model"] == "tiny"  # the served name stays across reloads (no --model-name)
    bad = client.post("/v1/admin/reload", json={"path": str(model_dir / "nope.onnx")}, headers=key)
    assert bad.status_code == 422 and error_of(bad)["code"] == "reload_failed"
    assert post(0)["predictions"][0]["label"] == "pies"  # still serving the previous model
    again = client.post("/v1/admin/reload", headers=key)  # same file again
    assert again.status_code == 200 and again.json()["file_sha256"] == swapped.json()["file_sha256"]
    metrics = client.get("/metrics").text
    assert 'vit_model_reloads_total{result="ok"} 2.0' in metrics
    assert 'vit_model_reloads_total{result="error"} 1.0' in metrics


def test_admin_key_is_checked_before_the_body_is_read(make_client: MakeClient, tiny_model: Path) -> None:
    client = make_client(tiny_model, api_key="k", admin_key="admin")
    huge = b"{" * (20 * 1024 * 1024)  # over the body limit: read first, it would be 413
    refused = client.post("/v1/admin/reload", content=huge, headers={"content-type": "application/json"})
    assert refused.status_code == 401
    user_key = client.post("/v1/admin/reload", headers={"X-API-Key": "k"})
    assert user_key.status_code == 401  # the API key is not the admin key
    admin = {"Authorization": "Bearer admin"}
    assert client.post("/v1/admin/reload", headers=admin).status_code == 200
    bad = client.post(
        "/v1/admin/reload", content=b"[[[", headers={**admin, "content-type": "application/json"}
    )
    assert bad.status_code == 400 and error_of(bad)["code"] == "bad_request"


def test_reload_refuses_paths_outside_the_model_directory_with_one_message(
    make_client: MakeClient, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(tiny_model, api_key="k", model_dir=tmp_path)
    key = {"X-API-Key": "k"}
    (tmp_path / "corrupt.onnx").write_bytes(b"not onnx")
    messages = set()
    with caplog.at_level(logging.INFO, logger="serve"):
        for path in ("/etc/passwd", "/nonexistent/x.onnx", "corrupt.onnx", "missing.onnx"):
            answer = client.post("/v1/admin/reload", json={"path": path}, headers=key)
            assert answer.status_code == 422, path
            messages.add(error_of(answer)["message"].replace(path, "PATH"))
    assert len(messages) == 1  # a caller cannot tell "missing" from "outside" or "not loadable"
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "/etc/passwd" in logged and "outside the model directory" in logged and "no such file" in logged
    assert "cannot load" in logged  # the corrupt file inside the directory
    answer = client.post("/v1/classify", content=image_bytes("dog"), headers={**PNG, **key})
    assert answer.status_code == 200  # still serving the starting model


def test_api_key_file(make_client: MakeClient, tiny_model: Path, tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    client = make_client(tiny_model, api_key_file=secret)
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/model", headers={"Authorization": "Bearer from-file"}).status_code == 200
