"""Prometheus metrics and the structured access log (one ASGI layer).

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
    """Counts and times every HTTP request, logs one JSON line per request."""

    def __init__(self, app: Any, *, metrics: Metrics, log_requests: Callable[[], bool]) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        received = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, counting_receive, tracking_send)
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
