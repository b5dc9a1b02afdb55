"""Prometheus instruments, one registry per app instance.

Per-app registries (not the global default) keep tests with several apps in
one process from colliding. ``/metrics`` renders :attr:`Metrics.registry`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from enclave.runners.registry import RunnerView

GB = 1e9

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
        # Runners that joined (enclave.runners.registry), refreshed on every change.
        self.runner_up = Gauge(
            "enclave_runner_up",
            "1 while a runner sends heartbeats.",
            ["runner"],
            registry=self.registry,
        )
        self.runner_memory_total = Gauge(
            "enclave_runner_memory_total_bytes",
            "Memory a runner's device declares.",
            ["runner", "device"],
            registry=self.registry,
        )
        self.runner_memory_used = Gauge(
            "enclave_runner_memory_used_bytes",
            "Memory in use on a runner's device, as its last heartbeat measured it.",
            ["runner", "device"],
            registry=self.registry,
        )
        self.runner_memory_free = Gauge(
            "enclave_runner_memory_free_bytes",
            "Memory free on a runner's device, as its last heartbeat measured it.",
            ["runner", "device"],
            registry=self.registry,
        )
        self.runner_loaded_models = Gauge(
            "enclave_runner_loaded_models",
            "Models loaded on a runner.",
            ["runner"],
            registry=self.registry,
        )
        self.runner_queue_depth = Gauge(
            "enclave_runner_queue_depth",
            "Requests waiting on a runner.",
            ["runner"],
            registry=self.registry,
        )
        self.runner_tokens_per_second = Gauge(
            "enclave_runner_tokens_per_second",
            "Tokens a runner generated per second, as its last heartbeat reported.",
            ["runner"],
            registry=self.registry,
        )

    def record_runners(self, runners: Iterable[RunnerView]) -> None:
        """Set the runner gauges to these runners (and drop those of runners that left)."""
        gauges = (
            self.runner_up,
            self.runner_memory_total,
            self.runner_memory_used,
            self.runner_memory_free,
            self.runner_loaded_models,
            self.runner_queue_depth,
            self.runner_tokens_per_second,
        )
        for gauge in gauges:
            gauge.clear()
        for runner in runners:
            self.runner_up.labels(runner.name).set(1 if runner.state == "up" else 0)
            self.runner_loaded_models.labels(runner.name).set(len(runner.loaded))
            self.runner_queue_depth.labels(runner.name).set(runner.queue_depth)
            self.runner_tokens_per_second.labels(runner.name).set(runner.tokens_per_s)
            for device in runner.devices:
                labels = (runner.name, device.name)
                self.runner_memory_total.labels(*labels).set(device.memory_total_gb * GB)
                if device.memory_used_gb is not None:
                    self.runner_memory_used.labels(*labels).set(device.memory_used_gb * GB)
                if device.memory_free_gb is not None:
                    self.runner_memory_free.labels(*labels).set(device.memory_free_gb * GB)
