"""Prometheus metrics of one app, and the middleware that counts and times every request."""

from __future__ import annotations

import time
from typing import Any

LABELS = "adapterhub.labels"  # scope key: the labels the middleware records (routes set "adapter")


class Metrics:
    """Prometheus metrics of one app, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("adapterhub_requests", "HTTP requests by endpoint, adapter and status",
                                ["endpoint", "adapter", "status"], registry=r)
        self.latency = Histogram("adapterhub_request_latency_seconds",
                                 "Request latency (streams: until the last event)", ["endpoint"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.tokens = Counter("adapterhub_generated_tokens", "Completion tokens generated", ["adapter"], registry=r)
        self.prompt_tokens = Counter("adapterhub_prompt_tokens", "Prompt tokens processed", ["adapter"], registry=r)
        self.batch_size = Histogram("adapterhub_batch_size", "Rows in one batch (static) or decode step (continuous)", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_wait = Histogram("adapterhub_queue_wait_seconds", "Time a request waited for its batch",
                                    registry=r, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                         5, 10, 30))
        self.adapters = Gauge("adapterhub_adapters_loaded",
                              "Adapters served, by the names clients use (a followed alias's slots count once)",
                              registry=r)
        self.queue_depth = Gauge("adapterhub_queue_depth", "Requests waiting for the worker", registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by route, adapter and status, and times it to its last byte."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        labels = {"adapter": ""}
        scope[LABELS] = labels
        status = 500
        start = time.perf_counter()

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, labels["adapter"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def label_adapter(scope: Any, name: str) -> None:
    """Record the adapter a request is about, for the request counter."""
    scope[LABELS]["adapter"] = name


__all__ = ["LABELS", "Metrics", "MetricsMiddleware", "label_adapter"]
