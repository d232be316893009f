"""``POST /v1/classify`` past FastAPI's request handling, for the requests that need none of it.

On a small model the server's rate is bound by Python work per request under one GIL, not by
the model (docs/BENCHMARKS.md, "What HTTP alone costs a request"): FastAPI's routing, its
dependency solving (the key's two security classes, the state, two query parameters) and its
exception layers are a large share of that work. This layer answers the common request itself,
with the route's own code (:func:`serve.v1.classify_response`): a ``POST`` to the route whose
query holds only well-formed ``top_k``/``reject_unknown`` values and that carries the right key
(or the server has none). Anything else (a bad or unknown parameter, a missing or wrong key,
another route) goes on to FastAPI, so every error a client can provoke is still FastAPI's and
``/docs`` still describes the route. It sits inside the metrics, body-limit and deadline layers,
which therefore apply to both paths alike.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request

from serve.deps import key_matches
from serve.errors import error_body, to_api_error

PATH = "/v1/classify"
TOP_K = re.compile(r"[0-9]{1,4}")
TOP_K_RANGE = (1, 1000)  # serve.v1.TopK's bounds
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}  # a subset of what FastAPI reads


def plain_query(query_string: bytes) -> dict[str, Any] | None:
    """``top_k``/``reject_unknown`` when the query holds nothing else and both are well-formed; else None."""
    values: dict[str, Any] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in values:
            return None
        if name == "top_k" and TOP_K.fullmatch(value) and TOP_K_RANGE[0] <= int(value) <= TOP_K_RANGE[1]:
            values[name] = int(value)
        elif name == "reject_unknown" and value.lower() in BOOLEANS:
            values[name] = BOOLEANS[value.lower()]
        else:
            return None
    return values


class FastClassify:
    """Answer plain ``POST /v1/classify`` requests with the route's code, the rest through FastAPI."""

    def __init__(self, app: Any, *, answer: Callable[..., Awaitable[Any]], route: Any) -> None:
        self.app = app
        self.answer = answer  # serve.v1.classify_response
        self.route = route  # its APIRoute: the metrics label, as FastAPI's router sets it

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not self._is_route(scope):
            await self.app(scope, receive, send)
            return
        query = plain_query(scope.get("query_string", b""))
        state = scope["app"].state.server
        if query is None or not key_matches(scope, state.settings.key):
            await self.app(scope, receive, send)  # FastAPI validates and answers the error
            return
        scope["route"] = self.route
        request = Request(scope, receive)
        try:
            response = await self.answer(request, state, **query)
        except Exception as exc:  # the same mapping as the app's error handlers
            response = error_body(scope["path"], to_api_error(exc))
        await response(scope, receive, send)

    @staticmethod
    def _is_route(scope: dict[str, Any]) -> bool:
        path = scope["path"]
        return path == PATH or path == scope.get("root_path", "") + PATH
