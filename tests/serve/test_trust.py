"""serve/trust.py: calibrated probabilities, OOD scores, unknown flags, top-k (numpy only)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from serve.metadata import Calibration, ModelMetadata, OodSpec
from serve.preprocess import Preprocessing
from serve.trust import Trust, TrustError, energy_score, msp_score, softmax, top_k

LOGITS = np.array([[4.0, 1.0, 0.0], [0.2, 0.1, 0.0]], np.float32)


def meta(**fields) -> ModelMetadata:
    return ModelMetadata(["a", "b", "c"], Preprocessing(input_size=(8, 8)), "tiny", **fields)


def test_without_trust_metadata_nothing_changes() -> None:
    verdicts = Trust.from_metadata(meta()).apply({"logits": LOGITS})
    np.testing.assert_allclose(verdicts.probabilities, softmax(LOGITS), atol=1e-6)
    assert verdicts.ood_scores is None and verdicts.ood_score(0) is None
    assert verdicts.unknown.tolist() == [False, False]


def test_temperature_softens_and_keeps_the_order() -> None:
    trust = Trust.from_metadata(meta(calibration=Calibration(temperature=2.0)))
    probs = trust.apply({"logits": LOGITS}).probabilities
    np.testing.assert_allclose(probs, softmax(LOGITS / 2.0), atol=1e-6)
    assert probs[0].max() < softmax(LOGITS)[0].max()
    assert probs.argmax(1).tolist() == LOGITS.argmax(1).tolist()


def test_msp_and_energy_from_logits() -> None:
    for method, expected in (("msp", msp_score(softmax(LOGITS))), ("energy", energy_score(LOGITS))):
        spec = OodSpec(method=method, threshold=float(expected.mean()))
        verdicts = Trust.from_metadata(meta(ood=spec)).apply({"logits": LOGITS})
        np.testing.assert_allclose(verdicts.ood_scores, expected)
        assert verdicts.unknown.tolist() == (expected > expected.mean()).tolist()
    np.testing.assert_allclose(energy_score(LOGITS), -np.log(np.exp(LOGITS.astype(np.float64)).sum(1)))


def test_in_graph_score_threshold_and_override() -> None:
    spec = OodSpec(method="mahalanobis", threshold=10.0, output="ood_score")
    outputs = {"logits": LOGITS, "ood_score": np.array([3.0, 30.0], np.float32)}
    trust = Trust.from_metadata(meta(ood=spec))
    assert trust.output_names == ["logits", "ood_score"]
    verdicts = trust.apply(outputs)
    assert verdicts.unknown.tolist() == [False, True] and verdicts.ood_score(1) == 30.0
    assert Trust.from_metadata(meta(ood=spec), ood_threshold=50.0).apply(outputs).unknown.tolist() == [
        False,
        False,
    ]
    with pytest.raises(TrustError, match="ood_score"):
        trust.apply({"logits": LOGITS})


def test_override_without_an_ood_score_is_an_error() -> None:
    with pytest.raises(TrustError, match="no OOD score"):
        Trust.from_metadata(meta(), ood_threshold=1.0)


def test_top_k() -> None:
    best = top_k(np.array([0.1, 0.7, 0.2]), ["a", "b", "c"], 5)
    assert [p.label for p in best] == ["b", "c", "a"]
    assert best[0].as_dict() == {"label": "b", "index": 1, "score": pytest.approx(0.7)}


def test_serve_trust_imports_no_torch() -> None:
    code = "import sys, serve.trust, serve.metadata; assert 'torch' not in sys.modules and 'vit' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
