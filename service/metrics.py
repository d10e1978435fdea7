"""Prometheus metrics, one registry per app so that tests can build many apps in one process.

With several uvicorn workers, `ebr serve` turns on prometheus-client's multiprocess mode: every worker writes
its values to files in PROMETHEUS_MULTIPROC_DIR and whichever worker answers /metrics reports all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "ebr_request_seconds",
            "HTTP request time",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tower_seconds = Histogram(
            "ebr_tower_seconds", "user tower time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.search_seconds = Histogram(
            "ebr_search_seconds", "index search time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "ebr_batch_size", "requests per batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r
        )
        self.queue_depth = Gauge(
            "ebr_queue_depth", "requests waiting for a batch", registry=r, multiprocess_mode="livesum"
        )
        self.rejected = Counter("ebr_rejected_total", "requests refused by backpressure", ["reason"], registry=r)
        self.serving = Gauge(
            "ebr_serving_info", "the serving snapshot (value 1)", ["version"], registry=r, multiprocess_mode="liveall"
        )
        self._serving_version: str | None = None
        self.swaps = Counter("ebr_swaps_total", "snapshot swaps", ["result"], registry=r)
        self.swap_seconds = Histogram(
            "ebr_swap_seconds",
            "load, verify, warm and gate time",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.online_recall = Gauge(
            "ebr_online_recall",
            "recall@k of sampled live queries against exact search",
            registry=r,
            multiprocess_mode="liveall",
        )

    def set_serving(self, version: str) -> None:
        # Multiprocess mode cannot remove a label, so the old version drops to 0 instead.
        if self._serving_version is not None and self._serving_version != version:
            self.serving.labels(version=self._serving_version).set(0)
        self.serving.labels(version=version).set(1)
        self._serving_version = version

    def exposition(self) -> bytes:
        if os.environ.get(MULTIPROCESS_DIR):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))

    def close(self) -> None:
        """A stopping worker takes its live gauges out of the multiprocess files."""
        if os.environ.get(MULTIPROCESS_DIR):
            multiprocess.mark_process_dead(os.getpid())
