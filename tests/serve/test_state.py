"""serve/state.py: the engine the server opens, reload paths, the stable served name."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve.settings import Settings
from serve.state import ReloadRefused, ServerState, open_engine
from tests.serve.test_engine import spins


@pytest.mark.parametrize(
    ("instances", "spin", "spinning"), [(2, True, True), (1, True, False), (2, False, False)]
)
def test_the_lone_request_session_spins_only_when_batches_have_their_own(
    tiny_model: Path, instances: int, spin: bool, spinning: bool
) -> None:
    # With instance sessions the all-threads session runs only on an idle server; with one
    # instance it runs the batches too, beside the decoding threads it must not starve.
    engine = open_engine(Settings(model=tiny_model, instances=instances, threads=2, spin=spin))
    assert spins(engine.session) is spinning


def test_reload_paths_stay_inside_the_model_directory(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.onnx").write_bytes(b"x")
    (models / "b.onnx").write_bytes(b"y")
    (tmp_path / "secret").write_text("no")
    (models / "link.onnx").symlink_to(tmp_path / "secret")
    state = ServerState(Settings(model=models / "a.onnx"))
    assert state.reload_target("b.onnx") == (models / "b.onnx").resolve()
    assert state.reload_target(str(models / "b.onnx")) == (models / "b.onnx").resolve()
    for outside in ("/etc/passwd", "../secret", "link.onnx", str(tmp_path / "secret")):
        with pytest.raises(ReloadRefused, match="outside the model directory"):
            state.reload_target(outside)
    with pytest.raises(ReloadRefused, match="no such file"):
        state.reload_target("missing.onnx")
    other = ServerState(Settings(model=models / "a.onnx", model_dir=tmp_path))
    assert other.reload_target("secret") == (tmp_path / "secret").resolve()


def test_the_served_name_does_not_follow_the_file() -> None:
    assert ServerState(Settings(model=Path("/m/first.onnx"))).name == "first"
    assert ServerState(Settings(model=Path("/m/first.onnx"), model_name="prod")).name == "prod"
