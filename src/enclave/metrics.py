"""Prometheus instruments, one registry per app instance.

Per-app registries (not the global default) keep tests with several apps in
one process from colliding. ``/metrics`` renders :attr:`Metrics.registry`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "enclave_http_requests",
            "HTTP requests by route, model and status.",
            ["method", "route", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "enclave_http_request_duration_seconds",
            "Time to the end of the response body, by route and model.",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "enclave_tokens",
            "Tokens processed, by model and direction (in = prompt, out = completion).",
            ["model", "direction"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "enclave_time_to_first_token_seconds",
            "From admission to the first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "enclave_queue_depth",
            "Requests waiting for a model slot.",
            ["model"],
            registry=self.registry,
        )
        self.gateway_requests = Counter(
            "enclave_gateway_requests",
            "Token-spending requests by chosen provider ('none' if refused) and outcome.",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.detector_findings = Counter(
            "enclave_detector_findings",
            "Requests in which a detector found something, by detector type.",
            ["type"],
            registry=self.registry,
        )
