"""The servers `scripts/bench_serve.py` compares `vit serve` with, each on the same ONNX model.

    python scripts/bench_peers.py naive    MODEL --port 8101   # FastAPI + onnxruntime, one image per call
    python scripts/bench_peers.py torch    MODEL --port 8102   # FastAPI + timm/torch eager (imports torch)
    python scripts/bench_peers.py litserve MODEL --port 8103 [--max-batch-size 32 --batch-timeout 0.005]
    python scripts/bench_peers.py floor    MODEL --port 8104   # FastAPI, multipart read, no model
    python scripts/bench_peers.py floor-asgi MODEL --port 8105 # bare ASGI on uvicorn, no model

Every server answers ``POST /predict`` with a multipart ``file`` (the same request bytes the
benchmark sends to `vit serve`), decodes and preprocesses with ``serve.preprocess`` (the same
definition), and returns the top-5 as JSON. They are written the way each framework's
documentation shows, without tuning: the point is what a user gets from each.

The two floors answer the same requests without decoding or running anything (a fixed top-5
of the model's labels): what uvicorn, and uvicorn + FastAPI's multipart form, cost a request on
these cores. No server built on them answers faster; decoding and inference come on top.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, UploadFile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.metadata import ModelMetadata  # noqa: E402
from serve.preprocess import decode_image  # noqa: E402
from serve.trust import softmax  # noqa: E402


def top5(logits: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    probs = softmax(logits[None])[0]
    return [{"label": labels[i], "index": int(i), "score": float(probs[i])} for i in np.argsort(-probs)[:5]]


def load_onnx(path: str) -> tuple[Any, ModelMetadata]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(
        os.sched_getaffinity(0)
    )  # what the default gives on a machine this size
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session, ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)


def naive_app(model: str) -> Any:
    """The tutorial server: a sync endpoint (FastAPI's thread pool), one session.run per request."""
    session, meta = load_onnx(model)
    input_name = session.get_inputs()[0].name
    app = FastAPI()

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        image = decode_image(file.file.read(), preprocessing=meta.preprocessing)
        logits = session.run(None, {input_name: meta.preprocessing(image)[None]})[0][0]
        return {"predictions": top5(logits, meta.labels)}

    return app


def torch_app(model: str) -> Any:
    """FastAPI + timm eager: the deployment without an export step (random weights, same architecture)."""
    import onnxruntime as ort
    import timm
    import torch

    import vit.stems  # noqa: F401 (registers the conv-stem models of the 32 px recipe)

    meta = ModelMetadata.from_props(ort.InferenceSession(model).get_modelmeta().custom_metadata_map)
    config = {k: v for k, v in meta.model_config.items() if k not in ("num_classes", "pretrained")}
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    net = timm.create_model(meta.model_name, pretrained=False, num_classes=len(meta.labels), **config).eval()
    app = FastAPI()

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        image = decode_image(file.file.read(), preprocessing=meta.preprocessing)
        with torch.inference_mode():
            logits = net(torch.from_numpy(meta.preprocessing(image)[None]))[0].numpy()
        return {"predictions": top5(logits, meta.labels)}

    return app


def floor_answer(model: str) -> bytes:
    """The JSON every floor answers: the shape of a top-5 answer, no inference."""
    import json

    _, meta = load_onnx(model)
    return json.dumps({"predictions": top5(np.zeros(len(meta.labels), np.float32), meta.labels)}).encode()


def floor_app(model: str) -> Any:
    """FastAPI reading the multipart ``file`` in an async route, answering a fixed JSON."""
    from fastapi import Response

    answer = floor_answer(model)
    app = FastAPI()

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)) -> Response:  # noqa: B008
        await file.read()
        return Response(answer, media_type="application/json")

    return app


def floor_asgi_app(model: str) -> Any:
    """A bare ASGI callable: reads the whole body and answers a fixed JSON (uvicorn's own cost)."""
    answer = floor_answer(model)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def run_litserve(model: str, port: int, max_batch_size: int, batch_timeout: float) -> None:
    import litserve as ls  # only this peer needs it (pip install litserve)

    class OnnxAPI(ls.LitAPI):
        """LitServe's documented pattern: setup / decode_request / batch / predict / unbatch / encode_response."""

        def __init__(self, model: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.model = model

        def setup(self, device: str) -> None:
            self.session, self.meta = load_onnx(self.model)
            self.input_name = self.session.get_inputs()[0].name

        def decode_request(self, request):  # noqa: ANN001 (unannotated: LitServe then passes the form)
            data = request["file"].file.read()
            return self.meta.preprocessing(decode_image(data, preprocessing=self.meta.preprocessing))

        def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
            return np.stack(inputs)

        def predict(self, x: np.ndarray) -> np.ndarray:
            return self.session.run(None, {self.input_name: x if x.ndim == 4 else x[None]})[0]

        def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
            return list(output)

        def encode_response(self, output: np.ndarray) -> dict[str, Any]:
            return {"predictions": top5(output.reshape(-1, output.shape[-1])[0], self.meta.labels)}

    api = OnnxAPI(model, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(
        host="127.0.0.1", port=port, num_api_servers=1, generate_client_file=False, log_level="warning"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["naive", "torch", "litserve", "floor", "floor-asgi"])
    parser.add_argument("model")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=1)
    parser.add_argument("--batch-timeout", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.kind == "litserve":
        run_litserve(args.model, args.port, args.max_batch_size, args.batch_timeout)
        return 0
    import uvicorn

    apps = {"naive": naive_app, "torch": torch_app, "floor": floor_app, "floor-asgi": floor_asgi_app}
    app = apps[args.kind](args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
