"""serve/pipeline.py's answer stage as clients see it: calibrated scores, the OOD score and the
unknown flag, on the idle path and the batched one, for /v1 and /v2 alike."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve.cli import main
from serve.engine import Engine
from serve.preprocess import decode_image
from serve.trust import softmax
from tests.serve.conftest import build_model, image_bytes

PNG = {"content-type": "image/png"}
GREY = (128, 128, 128)
MakeClient = Callable[..., TestClient]


def direct_logits(model: Path, data: bytes) -> np.ndarray:
    engine = Engine(model, device="cpu", threads=1)
    pre = engine.metadata.preprocessing
    return engine.infer(pre(decode_image(data, preprocessing=pre))[None]).logits[0]


@pytest.fixture(scope="module")
def trusted_model(model_dir: Path) -> Path:
    # Threshold between a saturated colour (-max logit about -7) and grey (about -0.4).
    return build_model(model_dir / "trusted.onnx", temperature=2.0, ood_threshold=-2.0)


def test_scores_are_calibrated_probabilities(make_client: MakeClient, trusted_model: Path) -> None:
    client = make_client(trusted_model)
    data = image_bytes("dog")
    answer = client.post("/v1/classify", content=data, headers=PNG).json()
    expected = softmax(direct_logits(trusted_model, data)[None], 2.0)[0]
    scores = {p["index"]: p["score"] for p in answer["predictions"]}
    assert scores == pytest.approx(dict(enumerate(expected)), abs=1e-6)
    assert max(scores.values()) < softmax(direct_logits(trusted_model, data)[None])[0].max()  # softened


def test_unknown_images_are_flagged_on_both_paths_and_rejected_on_request(
    make_client: MakeClient, trusted_model: Path
) -> None:
    client = make_client(trusted_model)
    known, grey = image_bytes("cat"), image_bytes(GREY)
    alone = client.post("/v1/classify", content=grey, headers=PNG).json()
    assert alone["unknown"] is True and alone["ood_score"] == pytest.approx(
        -direct_logits(trusted_model, grey).max(), abs=1e-5
    )
    files = [("files", ("known.png", known, "image/png")), ("files", ("grey.png", grey, "image/png"))]
    batched = client.post("/v1/classify", files=files).json()  # two images: the batch queue
    assert [a["unknown"] for a in batched] == [False, True]
    assert batched[0]["ood_score"] < -2.0 < batched[1]["ood_score"]
    rejected = client.post("/v1/classify?reject_unknown=true", files=files).json()
    assert rejected[0]["predictions"] and rejected[1]["predictions"] == [] and rejected[1]["unknown"]
    described = client.get("/v1/model").json()["trust"]
    assert described == {
        "temperature": 2.0,
        "ood_method": "mahalanobis",
        "ood_threshold": -2.0,
        "ood_accept_rate": 0.95,
    }


def test_the_server_threshold_overrides_the_file(make_client: MakeClient, trusted_model: Path) -> None:
    client = make_client(trusted_model, ood_threshold=100.0)
    assert client.post("/v1/classify", content=image_bytes(GREY), headers=PNG).json()["unknown"] is False


def test_a_file_without_trust_metadata_serves_plain_softmax(client: TestClient, tiny_model: Path) -> None:
    data = image_bytes("bird")
    answer = client.post("/v1/classify", content=data, headers=PNG).json()
    assert answer["ood_score"] is None and answer["unknown"] is False
    expected = softmax(direct_logits(tiny_model, data)[None])[0]
    assert answer["predictions"][0]["score"] == pytest.approx(expected.max(), abs=1e-6)


def test_an_ood_threshold_without_an_ood_score_is_refused_at_start(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tiny_model), "--ood-threshold", "1", "--port", "0"]) == 2
    assert "no OOD score" in capsys.readouterr().err


def test_oip_classification_is_calibrated_and_logits_stay_raw(
    make_client: MakeClient, trusted_model: Path
) -> None:
    client = make_client(trusted_model)
    data = image_bytes("dog")
    body = {
        "inputs": [
            {
                "name": "image_bytes",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(data).decode()],
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    }
    (output,) = client.post("/v2/models/trusted/infer", json=body).json()["outputs"]
    score, index, label = output["data"][0].split(":")
    logits = direct_logits(trusted_model, data)
    assert label == "dog" and float(score) == pytest.approx(softmax(logits[None], 2.0)[0].max(), abs=1e-5)
    raw = client.post("/v2/models/trusted/infer", json={**body, "outputs": [{"name": "logits"}]}).json()
    assert raw["outputs"][0]["data"] == pytest.approx(logits.tolist(), abs=1e-5)
