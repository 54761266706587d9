"""Prometheus metrics for the server, in a registry of its own (one per app, so tests and
several apps in one process never collide).

With `--workers N`, each uvicorn process counts what it served; serve/run.py then points
prometheus_client's multiprocess mode at a fresh directory (PROMETHEUS_MULTIPROC_DIR, set before
the workers start and import prometheus_client), and /metrics, whichever process answers it, sums
every process's counters and histograms from there.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when it is imported
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "latentspace_requests_total", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter(
            "latentspace_request_errors_total", "HTTP responses with status >= 400", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "latentspace_request_seconds", "request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        # multiprocess_mode (ignored in a single process): queued items add up over the live
        # processes; a model's worker is up only if it is up in every live process.
        self.queue_depth = Gauge(
            "latentspace_queue_items", "items waiting for inference", ["model"], registry=r, multiprocess_mode="livesum"
        )
        self.batch_size = Histogram(
            "latentspace_batch_items", "items per forward", ["model", "kind"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "latentspace_batch_seconds",
            "forward time per batch",
            ["model", "kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.embedded = Counter(
            "latentspace_items_embedded_total", "texts and images embedded", ["model", "kind"], registry=r
        )
        self.worker_up = Gauge(
            "latentspace_worker_up",
            "1 while the model's inference worker runs",
            ["model"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.agreement = Gauge(
            "latentspace_reference_min_cosine",
            "lowest cosine between the served runtime's and PyTorch fp32's vectors of the packaged reference "
            "set, measured at start-up (1.0 by construction where the runtime is PyTorch fp32)",
            ["model", "modality", "runtime", "precision"],
            registry=r,
            multiprocess_mode="min",
        )

    def observe_agreement(self, model: str, agreement: dict) -> None:
        """The reference set's lowest cosine to PyTorch fp32 per modality (runtime/agreement.py)."""
        for modality, a in agreement.items():
            if a.min_cosine is not None:
                self.agreement.labels(model, modality, a.runtime, a.precision).set(a.min_cosine)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, model: str, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model, kind).observe(size)
        self.batch_seconds.labels(model, kind).observe(seconds)
        self.embedded.labels(model, kind).inc(size)

    def render(self) -> bytes:
        shared = os.environ.get(MULTIPROCESS_ENV)
        if not shared:
            return generate_latest(self.registry)
        every_process = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_process, path=shared)
        return generate_latest(every_process)

    @staticmethod
    def process_exiting() -> None:
        """Drop this process's live gauges from the shared directory (multiprocess mode only)."""
        if os.environ.get(MULTIPROCESS_ENV):
            multiprocess.mark_process_dead(os.getpid())
