"""Prometheus metrics, one registry per app so that tests can build many apps in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.queue_depth = Gauge("ebr_queue_depth", "requests waiting for a batch", registry=r)
        self.rejected = Counter("ebr_rejected_total", "requests refused by backpressure", ["reason"], registry=r)
        self.serving = Gauge("ebr_serving_info", "the serving snapshot (value 1)", ["version"], registry=r)
        self.swaps = Counter("ebr_swaps_total", "snapshot swaps", ["result"], registry=r)
        self.swap_seconds = Histogram(
            "ebr_swap_seconds",
            "load, verify, warm and gate time",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.online_recall = Gauge(
            "ebr_online_recall", "recall@k of sampled live queries against exact search", registry=r
        )

    def set_serving(self, version: str) -> None:
        self.serving.clear()
        self.serving.labels(version=version).set(1)
