"""Which routes need the key, and that /openapi.json describes what each route really returns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve.oip import InferResponse, ModelMetadataV2
from serve.schemas import ErrorBody, ExplainAnswer, ImageAnswer, ModelInfo, Ready
from tests.serve.conftest import image_bytes

# Open by decision (docs/SERVING.md, "Keys"): probes, metrics, the protocol's server metadata
# and health, the page and its files, and the API documentation. Everything else needs the key.
OPEN = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/",
    "/docs",
    "/redoc",
}
OPEN_PREFIXES = ("/static", "/openapi.json", "/docs/")
PNG = {"content-type": "image/png"}


def test_every_route_but_the_open_ones_needs_the_key(
    make_client: Callable[..., TestClient], tiny_model: Path
) -> None:
    client = make_client(tiny_model, api_key="k")
    checked = 0
    for template, operations in client.get("/openapi.json").json()["paths"].items():
        path = template.replace("{name}", "tiny").replace("{version}", "1")
        for method in operations:
            answer = client.request(method.upper(), path)
            if path in OPEN or path.startswith(OPEN_PREFIXES):
                assert answer.status_code != 401, (method, path)
            else:
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["www-authenticate"].startswith("Bearer")
                checked += 1
    assert checked >= 10
    for page in ("/", "/static/app.js", "/docs", "/openapi.json"):  # not in the document, open too
        assert client.get(page).status_code == 200, page


def test_openapi_declares_the_key_schemes_and_every_error_body(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "200" in responses, (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    expected = "OipError" if path.startswith("/v2") else "ErrorBody"
                    if path.startswith("/v2") and path.endswith("ready") and status == "503":
                        expected = "ModelReady"  # the protocol's readiness answer, not an error
                    assert ref.endswith(expected), (method, path, status, ref)
    infer = document["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    assert {p["name"] for p in infer["parameters"] if p["in"] == "path"} == {"name", "version"}
    assert "InferRequest" in str(infer["requestBody"])
    classify = document["paths"]["/v1/classify"]["post"]
    assert {"400", "413", "415", "422", "503", "504"} <= set(classify["responses"])


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/explain"])
def test_real_answers_match_their_declared_models(attention_client: TestClient, path: str) -> None:
    model = ExplainAnswer if path.endswith("explain") else ImageAnswer
    one = attention_client.post(path, content=image_bytes("dog"), headers=PNG)
    assert one.status_code == 200
    model.model_validate(one.json(), strict=True)
    several = attention_client.post(path, files=[("files", ("a.png", image_bytes("cat"), "image/png"))] * 2)
    assert [model.model_validate(a) for a in several.json()]
    ModelInfo.model_validate(attention_client.get("/v1/model").json())
    Ready.model_validate(attention_client.get("/readyz").json())
    ModelMetadataV2.model_validate(attention_client.get("/v2/models/tiny_attn").json())
    ErrorBody.model_validate(attention_client.post(path, content=b"not an image", headers=PNG).json())


def test_oip_answers_match_their_declared_model(client: TestClient) -> None:
    import base64

    body = {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(image_bytes()).decode()],
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": 2}}],
    }
    answer = client.post("/v2/models/tiny/infer", json=body)
    assert answer.status_code == 200
    parsed = InferResponse.model_validate(answer.json())
    assert parsed.outputs[0].datatype == "BYTES" and parsed.outputs[0].shape == [1, 2]
