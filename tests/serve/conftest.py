"""Fixtures for the server tests: tiny ONNX models built with onnx.helper (no torch).

The classifier is ``images [N,3,32,32] -> GlobalAveragePool -> Flatten -> MatMul -> logits``
with an identity-like weight, so the predicted class is the image's dominant colour channel:
a red image is ``cat``, green ``dog``, blue ``bird``. The attention variant also outputs
``attention [N,4,4]``: the 8x8-pooled channel mean, softmax-normalised to sum to 1.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from serve.app import create_app
from serve.metadata import Calibration, ModelMetadata, OodSpec
from serve.preprocess import Preprocessing
from serve.settings import Settings

LABELS = ["cat", "dog", "bird"]
SIZE = 32
GRID = 4
COLOURS = {"cat": (230, 20, 20), "dog": (20, 230, 20), "bird": (20, 20, 230)}


def build_model(
    path: Path,
    *,
    attention: bool = False,
    labels: list[str] | None = None,
    gain: float = 4.0,
    static_batch: int | None = None,
    metadata: bool = True,
    temperature: float | None = None,
    ood_threshold: float | None = None,
) -> Path:
    """Write a tiny classifier (optionally with an attention output) with vit metadata.

    ``temperature``: calibration in the metadata. ``ood_threshold``: an in-graph OOD score
    output ``ood_score = -max(logits)`` (high for grey images, low for saturated ones) with
    that threshold, as a Mahalanobis export carries its score.
    """
    labels = labels or LABELS
    classes = len(labels)
    weight = np.zeros((3, classes), np.float32)
    for i in range(classes):
        weight[i % 3, i] = gain * (1 + i // 3)  # classes beyond 3 reuse channels, scaled apart
    batch = static_batch or "N"
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
    ]
    initializers = [numpy_helper.from_array(weight, "weight")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])]
    if ood_threshold is not None:
        nodes += [
            helper.make_node("ReduceMax", ["logits"], ["top"], axes=[1], keepdims=0),
            helper.make_node("Neg", ["top"], ["ood_score"]),
        ]
        outputs.append(helper.make_tensor_value_info("ood_score", TensorProto.FLOAT, [batch]))
    if attention:
        stride = SIZE // GRID
        nodes += [
            helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1], keepdims=1),
            helper.make_node(
                "AveragePool", ["mean"], ["cells"], kernel_shape=[stride, stride], strides=[stride, stride]
            ),
            helper.make_node("Reshape", ["cells", "flat_shape"], ["cells_flat"]),
            helper.make_node("Softmax", ["cells_flat"], ["weights"], axis=-1),
            helper.make_node("Reshape", ["weights", "grid_shape"], ["attention"]),
        ]
        initializers += [
            numpy_helper.from_array(np.array([0, GRID * GRID], np.int64), "flat_shape"),
            numpy_helper.from_array(np.array([0, GRID, GRID], np.int64), "grid_shape"),
        ]
        outputs.append(helper.make_tensor_value_info("attention", TensorProto.FLOAT, [batch, GRID, GRID]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        meta = ModelMetadata(
            labels=list(labels),
            preprocessing=Preprocessing(input_size=(SIZE, SIZE)),
            model_name="tiny_test",
            weights_sha256=f"{gain:08.3f}".replace(".", "") * 8,
            outputs={"logits": "logits", "attention": "attention" if attention else None},
            calibration=Calibration(temperature) if temperature else None,
            ood=OodSpec("mahalanobis", ood_threshold, output="ood_score")
            if ood_threshold is not None
            else None,
        )
        helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def image_bytes(
    colour: str | tuple[int, int, int] = "cat",
    size: tuple[int, int] = (40, 36),
    fmt: str = "PNG",
    mode: str = "RGB",
) -> bytes:
    """An encoded solid image whose dominant channel selects the class named by ``colour``."""
    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    image = Image.new("RGB", size, rgb)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_dir: Path) -> Path:
    return build_model(model_dir / "tiny.onnx")


@pytest.fixture(scope="session")
def attention_model(model_dir: Path) -> Path:
    return build_model(model_dir / "tiny_attn.onnx", attention=True)


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """``make_client(model, **settings)`` -> a started in-process client (closed after the test)."""
    opened: list[TestClient] = []

    def make(model: Path, **overrides: object) -> TestClient:
        values = {"threads": 1, "preprocess_threads": 2, "access_log": False, **overrides}
        settings = Settings(model=model, **values)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient], tiny_model: Path) -> TestClient:
    return make_client(tiny_model)


@pytest.fixture
def attention_client(make_client: Callable[..., TestClient], attention_model: Path) -> TestClient:
    return make_client(attention_model)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server() -> Iterator[Callable[..., str]]:
    """``live_server(model, **settings)`` -> base URL of uvicorn in a thread on a free loopback port."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(model: Path, **overrides: object) -> str:
        values = {"threads": 1, "access_log": False, "port": free_port(), **overrides}
        settings = Settings(model=model, **values)
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        while not server.started:  # poll a condition, not a duration
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return f"127.0.0.1:{settings.port}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(10)
