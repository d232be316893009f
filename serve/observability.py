"""Prometheus metrics, the structured access log and the request-body limit (one ASGI layer).

Metrics live on a per-app :class:`CollectorRegistry`, so several apps (tests, reloads) never
share counters. The middleware is plain ASGI rather than ``BaseHTTPMiddleware``: it adds no
task per request and sees the status even of responses it did not build.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from serve.errors import ApiError

access_log = logging.getLogger("serve.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The server's Prometheus series (names documented in docs/SERVING.md)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vit_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "vit_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vit_batch_size", "Images per inference batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.images = Counter("vit_images", "Images run through the model", registry=r)
        self.queue_depth = Gauge("vit_queue_depth", "Images queued or running", registry=r)
        self.in_flight = Gauge("vit_requests_in_flight", "HTTP requests being handled", registry=r)
        self.load_seconds = Gauge("vit_model_load_seconds", "Seconds to load and warm the model", registry=r)
        self.reloads = Counter("vit_model_reloads", "Model reloads by result", ["result"], registry=r)
        self.model = Info("vit_model", "The model being served", registry=r)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)


class ObservabilityMiddleware:
    """Counts and times every HTTP request, logs one JSON line per request, caps body bytes."""

    def __init__(
        self,
        app: Any,
        *,
        metrics: Metrics,
        max_body_bytes: Callable[[], int],
        log_requests: Callable[[], bool],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.log_requests = log_requests

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        limit = self.max_body_bytes()
        received = 0
        declared = _content_length(scope)

        async def limited_receive() -> dict[str, Any]:
            # Checked when a route reads the body, so only routes that take bodies pay for it.
            nonlocal received
            if declared is not None and declared > limit:
                raise ApiError(413, "body_too_large", f"request body of {declared} bytes exceeds {limit}")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, "body_too_large", f"request body exceeds {limit} bytes")
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, limited_receive, tracking_send)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(elapsed)
            if self.log_requests():
                client = scope.get("client") or ("", 0)
                access_log.info(
                    json.dumps(
                        {
                            "ts": round(time.time(), 3),
                            "client": client[0],
                            "method": scope["method"],
                            "path": scope["path"],
                            "route": label,
                            "status": status,
                            "ms": round(elapsed * 1000, 2),
                            "bytes_in": received,
                        }
                    )
                )


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
