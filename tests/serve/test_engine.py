"""serve/engine.py: loading, metadata, inference, attention, top-k and load errors."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from serve.engine import Engine, EngineError, choose_providers
from serve.instances import choose_batch, warm_up
from serve.preprocess import decode_image
from tests.serve.conftest import GRID, LABELS, SIZE, build_model, image_bytes


def preprocessed(engine: Engine, *colours: str) -> np.ndarray:
    pre = engine.metadata.preprocessing
    return np.stack([pre(decode_image(image_bytes(c))) for c in colours])


def test_loads_metadata_and_io(tiny_model: Path) -> None:
    engine = Engine(tiny_model, device="cpu", threads=1)
    assert engine.labels == LABELS
    assert engine.input_name == "images"
    assert engine.input_shape == (3, SIZE, SIZE)
    assert engine.providers[0] == "CPUExecutionProvider"
    assert not engine.has_attention
    described = engine.describe()
    assert described["labels"] == LABELS and described["input_size"] == [SIZE, SIZE]
    assert len(described["file_sha256"]) == 64 and described["provider"] == "CPUExecutionProvider"


def spins(session: ort.InferenceSession) -> bool:
    return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_session_options_spin_only_when_asked_and_threads(tiny_model: Path) -> None:
    engine = Engine(tiny_model, device="cpu", threads=1)
    assert not spins(engine.session)
    assert engine.session.get_session_options().intra_op_num_threads == 1
    spinning = Engine(tiny_model, device="cpu", threads=2, spinning=True)
    warm_up(spinning, max_batch_size=2, run_batch_size=1, instances=2)
    assert spins(spinning.session)  # the all-threads session only
    assert not any(spins(session) for session in spinning.instance_sessions)


def test_warmup_opens_one_session_per_instance_with_a_share_of_the_threads(tiny_model: Path) -> None:
    engine = Engine(tiny_model, device="cpu", threads=4)
    batch = preprocessed(engine, "cat", "dog")
    single = engine.infer(batch).logits
    warm_up(engine, max_batch_size=4, run_batch_size=2, instances=2)
    assert len(engine.instance_sessions) == 2 and engine.instance_threads == 2
    for session in engine.instance_sessions:
        assert session is not engine.session
        assert session.get_session_options().intra_op_num_threads == 2
    for instance in (0, 1, 5):  # any worker index maps onto a session
        np.testing.assert_allclose(engine.infer(batch, instance=instance).logits, single, rtol=1e-6)
    alone = Engine(tiny_model, device="cpu", threads=4)
    warm_up(alone, max_batch_size=4, run_batch_size=2, instances=1)
    assert alone.instance_sessions == [] and alone.instance_threads == 4
    shared = Engine(tiny_model, device="cpu", threads=2)  # one thread each: one session for both
    warm_up(shared, max_batch_size=4, run_batch_size=2, instances=2)
    assert len(shared.instance_sessions) == 1 and shared.instance_threads == 1
    assert shared.instance_sessions[0] is not shared.session


def test_infer_matches_the_graph_arithmetic(tiny_model: Path) -> None:
    engine = Engine(tiny_model, device="cpu", threads=1)
    batch = preprocessed(engine, "cat", "dog", "bird")
    logits = engine.infer(batch).logits
    weight = np.zeros((3, 3), np.float32)
    np.fill_diagonal(weight, 4.0)
    np.testing.assert_allclose(logits, batch.mean(axis=(2, 3)) @ weight, rtol=1e-5, atol=1e-5)
    assert [int(i) for i in logits.argmax(axis=1)] == [0, 1, 2]


def test_attention_only_when_asked(attention_model: Path) -> None:
    engine = Engine(attention_model, device="cpu", threads=1)
    batch = preprocessed(engine, "cat", "dog")
    assert engine.has_attention and engine.infer(batch).attention is None
    attention = engine.infer(batch, with_attention=True).attention
    assert attention.shape == (2, GRID, GRID)
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_static_batch_is_padded_and_trimmed(model_dir: Path) -> None:
    engine = Engine(build_model(model_dir / "static.onnx", static_batch=4), device="cpu", threads=1)
    assert engine.run_batch_size == 4
    assert engine.infer(preprocessed(engine, "bird", "cat")).logits.argmax(axis=1).tolist() == [2, 0]
    warm_up(engine, 32)  # must not ask for a batch larger than the file allows
    assert engine.run_batch_size == 4


def test_run_batch_size_is_measured_or_given(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(tiny_model, device="cpu", threads=1)
    measured: list[dict[int, float]] = []

    def recording(per_image: dict[int, float]) -> int:
        measured.append(per_image)
        return choose_batch(per_image)

    monkeypatch.setattr("serve.instances.choose_batch", recording)
    warm_up(engine, 8)
    (timings,) = measured
    assert sorted(timings) == [1, 2, 4, 8] and all(0 < t < float("inf") for t in timings.values())
    assert engine.run_batch_size == choose_batch(timings)
    warm_up(engine, 8, run_batch_size=3)
    assert engine.run_batch_size == 3
    warm_up(engine, 2, run_batch_size=16)
    assert engine.run_batch_size == 2  # never more than the batcher's largest batch


def test_warmup_probes_with_concurrent_calls_and_ends_by_shrinking_the_arena(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(tiny_model, device="cpu", threads=2)
    session_run = ort.InferenceSession.run
    calls: list[tuple[str, int, int, str]] = []  # thread, session, batch size, shrink entry

    def recording_run(session: Any, outputs: Any, feed: dict[str, np.ndarray], options: Any = None) -> Any:
        shrink = options.get_run_config_entry("memory.enable_memory_arena_shrinkage") if options else ""
        calls.append((threading.current_thread().name, id(session), len(next(iter(feed.values()))), shrink))
        return session_run(session, outputs, feed, options)

    monkeypatch.setattr(ort.InferenceSession, "run", recording_run)
    warm_up(engine, 4, instances=2)
    probes = [(thread, session) for thread, session, _, _ in calls if thread.startswith("vit-probe")]
    assert len({thread for thread, _ in probes}) == 2  # the batch sizes were timed with two calls at once
    assert {session for _, session in probes} == {id(s) for s in engine.instance_sessions}
    assert {size for _, _, size, _ in calls} == {1, 2, 4}
    sessions = [id(s) for s in (engine.session, *engine.instance_sessions)]
    assert len(sessions) == 2  # all threads, and one single-threaded session for both instances
    assert [(session, size, shrink) for _, session, size, shrink in calls[-2:]] == [
        (session, 1, "cpu:0") for session in sessions
    ]
    assert not any(shrink for _, _, _, shrink in calls[:-2])


def test_the_chosen_batch_is_the_smallest_within_five_percent_of_the_fastest() -> None:
    assert choose_batch({1: 1.0, 2: 0.6, 4: 0.5, 8: 0.52}) == 4
    assert choose_batch({1: 1.0, 2: 0.52, 4: 0.5}) == 2
    assert choose_batch({1: 0.3, 2: 0.5}) == 1


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="missing.onnx: no such model file"):
        Engine(tmp_path / "missing.onnx")


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"not an onnx file")
    with pytest.raises(EngineError, match="corrupt.onnx: onnxruntime cannot load it"):
        Engine(path)


def test_file_without_vit_metadata_says_how_to_export(model_dir: Path) -> None:
    path = build_model(model_dir / "plain.onnx", metadata=False)
    with pytest.raises(EngineError, match="vit export"):
        Engine(path)


def test_labels_must_match_outputs(model_dir: Path) -> None:
    path = build_model(model_dir / "four.onnx", labels=["a", "b", "c", "d"])
    engine = Engine(path)
    assert len(engine.labels) == 4  # consistent file loads
    import onnx

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "vit.labels":
            prop.value = '["a", "b"]'
    broken = model_dir / "broken_labels.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(EngineError, match="4 outputs but 2 labels"):
        Engine(broken)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_without_provider_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match="onnxruntime-gpu"):
        choose_providers("cuda")
    assert choose_providers("auto") == ["CPUExecutionProvider"]
