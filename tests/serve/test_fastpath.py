"""The classify fast path: which requests it answers, which it leaves to FastAPI, and that both agree."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.responses import JSONResponse

from serve.fastpath import FastClassify, plain_query
from serve.preprocess import ImageError
from tests.serve.conftest import image_bytes

PNG = {"Content-Type": "image/png"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", {}),
        (b"top_k=3", {"top_k": 3}),
        (b"top_k=1000&reject_unknown=true", {"top_k": 1000, "reject_unknown": True}),
        (b"reject_unknown=0", {"reject_unknown": False}),
        (b"reject_unknown=False", {"reject_unknown": False}),
    ],
)
def test_plain_queries_are_read(query: bytes, expected: dict[str, Any]) -> None:
    assert plain_query(query) == expected


@pytest.mark.parametrize(
    "query",
    [b"top_k=0", b"top_k=1001", b"top_k=abc", b"top_k=", b"top_k=-1", b"top_k=1&top_k=2", b"reject_unknown=maybe",
     b"other=1", b"top_k=%31%30%30%30%30"],
)  # fmt: skip
def test_anything_else_goes_to_fastapi(query: bytes) -> None:
    assert plain_query(query) is None


class Recorder:
    """A downstream ASGI app and an ``answer`` that record which one ran."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail

    async def downstream(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls.append("fastapi")
        await JSONResponse({"by": "fastapi"})(scope, receive, send)

    async def answer(self, request: Any, state: Any, **query: Any) -> JSONResponse:
        self.calls.append(f"fast {sorted(query.items())}")
        if self.fail is not None:
            raise self.fail
        return JSONResponse({"by": "fast"})


def call(layer: FastClassify, method: str, path: str, query: bytes = b"", headers: dict | None = None,
         key: str | None = None) -> tuple[int, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """One request through ``layer``: status, JSON body and the scope afterwards."""
    state = SimpleNamespace(settings=SimpleNamespace(key=key))
    scope = {
        "type": "http", "method": method, "path": path, "root_path": "", "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "app": SimpleNamespace(state=SimpleNamespace(server=state)),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(layer(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"]), scope


def layer_for(recorder: Recorder) -> FastClassify:
    return FastClassify(recorder.downstream, answer=recorder.answer, route="ROUTE")


def test_a_plain_request_is_answered_by_the_route_code_with_its_metrics_label() -> None:
    recorder = Recorder()
    status, body, scope = call(layer_for(recorder), "POST", "/v1/classify", b"top_k=2")
    assert (status, body, recorder.calls) == (200, {"by": "fast"}, ["fast [('top_k', 2)]"])
    assert scope["route"] == "ROUTE"


def test_other_methods_routes_and_queries_go_to_fastapi() -> None:
    recorder = Recorder()
    layer = layer_for(recorder)
    for method, path, query in (("GET", "/v1/classify", b""), ("POST", "/v1/explain", b""),
                                ("POST", "/v1/classify", b"top_k=0")):  # fmt: skip
        assert call(layer, method, path, query)[1] == {"by": "fastapi"}
    assert recorder.calls == ["fastapi"] * 3


def test_only_the_right_key_takes_the_fast_path() -> None:
    recorder = Recorder()
    layer = layer_for(recorder)
    for headers in ({"Authorization": "Bearer k"}, {"X-API-Key": "k"}, {"authorization": "bearer  k "}):
        assert call(layer, "POST", "/v1/classify", headers=headers, key="k")[1] == {"by": "fast"}, headers
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"X-API-Key": "nope"},
        {"Authorization": "Basic k"},
    ):
        assert call(layer, "POST", "/v1/classify", headers=headers, key="k")[1] == {"by": "fastapi"}, headers


def test_errors_get_the_apps_error_shape() -> None:
    status, body, _ = call(layer_for(Recorder(fail=ImageError("body: not an image"))), "POST", "/v1/classify")
    assert status == 400 and body == {"error": {"code": "invalid_image", "message": "body: not an image"}}


def test_both_paths_answer_alike(make_client: Any, tiny_model: Path) -> None:
    client = make_client(tiny_model, api_key="k")
    key = {**PNG, "X-API-Key": "k"}
    fast = client.post("/v1/classify?top_k=2", content=image_bytes(), headers=key)
    # An unknown parameter is FastAPI's to handle (it ignores it): the same answer.
    slow = client.post("/v1/classify?top_k=2&x=1", content=image_bytes(), headers=key)
    assert fast.status_code == slow.status_code == 200 and fast.json() == slow.json()
    assert len(fast.json()["predictions"]) == 2 and fast.json()["predictions"][0]["label"] == "cat"
    assert client.post("/v1/classify?top_k=0", content=image_bytes(), headers=key).status_code == 422
    assert client.post("/v1/classify", content=image_bytes(), headers=PNG).status_code == 401
    junk = client.post("/v1/classify", content=b"junk", headers=key)
    assert junk.status_code == 400 and junk.json()["error"]["code"] == "invalid_image"
