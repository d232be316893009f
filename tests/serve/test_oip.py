"""serve/oip.py: Open Inference Protocol v2 routes, in-process and through tritonclient."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve.engine import Engine
from serve.preprocess import decode_image
from tests.serve.conftest import GRID, LABELS, SIZE, image_bytes


def tensor(model: Path, *colours: str) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed FP32 batch and the logits the engine gives for it."""
    engine = Engine(model, device="cpu", threads=1)
    pre = engine.metadata.preprocessing
    batch = np.stack([pre(decode_image(image_bytes(c))) for c in colours])
    return batch, engine.infer(batch).logits


def oip_error(response) -> str:
    body = response.json()
    assert isinstance(body.get("error"), str), body  # the protocol's shape: {"error": "message"}
    return body["error"]


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "classification"]
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny" and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}
    assert meta["inputs"][1]["datatype"] == "BYTES"
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    assert client.get("/v2/models/tiny/versions/1").status_code == 200
    missing = client.get("/v2/models/other")
    assert missing.status_code == 404 and "other" in oip_error(missing)


def test_infer_json_fp32(client: TestClient, tiny_model: Path) -> None:
    batch, logits = tensor(tiny_model, "cat", "bird")
    request = {
        "id": "42",
        "inputs": [
            {"name": "images", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}
        ],
    }
    response = client.post("/v2/models/tiny/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "42" and body["model_name"] == "tiny"
    (output,) = body["outputs"]
    assert output["name"] == "logits" and output["shape"] == [2, 3] and output["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(output["data"]).reshape(2, 3), logits, rtol=1e-5, atol=1e-5)


def test_infer_json_bytes_base64_and_classification(client: TestClient) -> None:
    images = [base64.b64encode(image_bytes(c)).decode() for c in ("dog", "cat")]
    request = {
        "inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES", "data": images}],
        "outputs": [{"name": "logits", "parameters": {"classification": 2}}],
    }
    body = client.post("/v2/models/tiny/infer", json=request).json()
    (output,) = body["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [2, 2]
    assert [entry.split(":", 2)[1:] for entry in output["data"][::2]] == [["1", "dog"], ["0", "cat"]]


def test_infer_attention_output(attention_client: TestClient, attention_model: Path) -> None:
    batch, _ = tensor(attention_model, "cat")
    request = {
        "inputs": [
            {"name": "images", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}
        ],
        "outputs": [{"name": "attention"}],
    }
    (output,) = attention_client.post("/v2/models/tiny_attn/infer", json=request).json()["outputs"]
    assert output["shape"] == [1, GRID, GRID] and sum(output["data"]) == pytest.approx(1.0, abs=1e-4)


def test_binary_tensor_extension(client: TestClient, tiny_model: Path) -> None:
    batch, logits = tensor(tiny_model, "bird")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = client.post(
        "/v2/models/tiny/infer",
        content=header + batch.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    cut = int(response.headers["inference-header-content-length"])
    (output,) = json.loads(response.content[:cut])["outputs"]
    values = np.frombuffer(response.content[cut:], np.float32).reshape(output["shape"])
    np.testing.assert_allclose(values, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("request_body", "needle"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}, "unknown input"),
        (
            {"inputs": [{"name": "images", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0] * 192}]},
            "shape",
        ),
        (
            {"inputs": [{"name": "images", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": [0, 1]}]},
            "does not fit",
        ),
        (
            {"inputs": [{"name": "images", "shape": [1, 3, SIZE, SIZE], "datatype": "INT8", "data": [0]}]},
            "INT8",
        ),
        ({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, "base64"),
        (
            {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]},
            "image_bytes[0]",
        ),
        ({"inputs": [{"name": "images", "shape": "x", "datatype": "FP32"}]}, "shape"),
        (
            {
                "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}],
                "outputs": [{"name": "zzz"}],
            },
            "unknown output",
        ),
    ],
)
def test_bad_requests_are_400_with_oip_errors(client: TestClient, request_body: dict, needle: str) -> None:
    response = client.post("/v2/models/tiny/infer", json=request_body)
    assert response.status_code == 400 and needle in oip_error(response)


def test_invalid_json_and_bad_header_length(client: TestClient) -> None:
    assert client.post("/v2/models/tiny/infer", content=b"{not json").status_code == 400
    response = client.post(
        "/v2/models/tiny/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"}
    )
    assert response.status_code == 400 and "outside the body" in oip_error(response)


def test_key_required_except_health(make_client: Callable[..., TestClient], tiny_model: Path) -> None:
    client = make_client(tiny_model, api_key="k")
    assert client.get("/v2/health/ready").status_code == 200
    response = client.get("/v2/models/tiny")
    assert response.status_code == 401 and "API key" in oip_error(response)
    assert client.get("/v2/models/tiny", headers={"Authorization": "Bearer k"}).status_code == 200


def test_tritonclient_works_unchanged(live_server: Callable[..., str], tiny_model: Path) -> None:
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    url = live_server(tiny_model)
    client = httpclient.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert client.get_model_metadata("tiny")["inputs"][0]["name"] == "images"

    batch, logits = tensor(tiny_model, "dog", "cat", "bird")
    images = httpclient.InferInput("images", list(batch.shape), "FP32")
    images.set_data_from_numpy(batch)  # binary tensor extension, the client's default
    result = client.infer("tiny", [images])
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-5, atol=1e-5)

    encoded = np.array([image_bytes("bird"), image_bytes("dog")], dtype=np.object_)
    raw = httpclient.InferInput("image_bytes", [2], "BYTES")
    raw.set_data_from_numpy(encoded)
    top = httpclient.InferRequestedOutput("logits", class_count=1)
    labels = [
        entry.decode().split(":")[2]
        for entry in client.infer("tiny", [raw], outputs=[top]).as_numpy("logits").ravel()
    ]
    assert labels == ["bird", "dog"] and set(labels) <= set(LABELS)

    with pytest.raises(Exception, match="unknown model"):
        client.infer("other", [images])
    client.close()


def test_malformed_structures_never_500(client: TestClient) -> None:
    junk = [None, 1, -1, "x", [], {}, [1, "a"], {"a": 1}, True, 1.5]
    for value in junk:
        for body in (
            {"inputs": value},
            {"inputs": [value]},
            {"inputs": [{"name": "images", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": value}]},
            {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": value}]},
            {"inputs": [{"name": "images", "shape": value, "datatype": value, "parameters": value}]},
            {
                "inputs": [{"name": "images", "shape": [1], "datatype": "FP32"}],
                "outputs": value,
                "parameters": value,
            },
            {
                "inputs": [
                    {
                        "name": "images",
                        "shape": [1, 3, SIZE, SIZE],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": value},
                    }
                ]
            },
        ):
            response = client.post("/v2/models/tiny/infer", json=body)
            assert 400 <= response.status_code < 500, (body, response.text)


def test_outputs_are_bounded_and_named_once(client: TestClient, tiny_model: Path) -> None:
    batch, _ = tensor(tiny_model, "cat")
    image = {"name": "images", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}
    twice = client.post(
        "/v2/models/tiny/infer", json={"inputs": [image], "outputs": [{"name": "logits"}, {"name": "logits"}]}
    )
    assert twice.status_code == 400 and "twice" in twice.json()["error"]
    many = client.post(
        "/v2/models/tiny/infer", json={"inputs": [image], "outputs": [{"name": "logits"}] * 100_000}
    )
    assert many.status_code == 400 and "limit" in many.json()["error"]


def test_deeply_nested_json_is_a_400_not_a_500(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = client.post(
        "/v2/models/tiny/infer", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"]
    assert not [r for r in caplog.records if r.exc_info]  # no traceback logged


def test_image_count_limit_applies_to_tensors_and_bytes(
    make_client: Callable[..., TestClient], tiny_model: Path
) -> None:
    client = make_client(tiny_model, max_images=2)
    blob = base64.b64encode(image_bytes("dog")).decode()
    bytes_body = {"inputs": [{"name": "image_bytes", "shape": [3], "datatype": "BYTES", "data": [blob] * 3}]}
    assert client.post("/v2/models/tiny/infer", json=bytes_body).status_code == 413
    shape = [3, 3, SIZE, SIZE]
    tensor_body = {
        "inputs": [
            {"name": "images", "shape": shape, "datatype": "FP32", "data": [0.0] * (3 * 3 * SIZE * SIZE)}
        ]
    }
    assert client.post("/v2/models/tiny/infer", json=tensor_body).status_code == 413
