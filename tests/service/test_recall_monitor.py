"""The online recall gauge, fed by live requests through a real app and a real IVF-PQ + refine index."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from index.export_dir import read_export
from index.manifest import FeatureSpec
from index.search import exact_top_k, recall_at_k
from service.app import create_app
from service.devices import choose_placement
from service.payloads import random_features
from service.recall_monitor import exhaustive_rows
from service.settings import Settings
from service.snapshot import load_snapshot
from service.validation import validate_features
from tests.conftest import VERSIONS, TrainedExport
from tests.service.test_app import wait_ready


def test_the_exhaustive_scan_agrees_with_exact_search(store: Path, trained_export: TrainedExport) -> None:
    snapshot = load_snapshot(store / VERSIONS[0], choose_placement("cpu"), threads=1)
    embeddings = read_export(trained_export.root).embeddings
    queries = embeddings[:50] + np.random.default_rng(0).normal(0, 0.05, size=(50, embeddings.shape[1]))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    assert recall_at_k(exhaustive_rows(snapshot.index, queries, 20), exact_top_k(embeddings, queries, 20)) >= 0.95


def test_sampled_live_queries_set_the_recall_gauge(store: Path) -> None:
    app = create_app(Settings(store=store, device="cpu", recall_sample_rate=1.0, recall_min_interval_s=0.0))
    with TestClient(app) as client:
        wait_ready(client)
        spec = FeatureSpec.model_validate(client.get("/v1/snapshot").json()["feature_spec"])
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + 20
        gauge = None
        while gauge is None or gauge == 0.0:
            assert time.monotonic() < deadline, "the recall gauge was never set"
            features = random_features(spec, rng)
            client.post("/v1/retrieve", json={"features": features, "k": 30})
            for line in client.get("/metrics").text.splitlines():
                if line.startswith("ebr_online_recall "):
                    gauge = float(line.split()[1])
    assert 0.8 <= gauge <= 1.0


def test_checks_are_spaced_in_time(store: Path) -> None:
    from service.metrics import Metrics
    from service.recall_monitor import RecallMonitor

    snapshot = load_snapshot(store / VERSIONS[0], choose_placement("cpu"), threads=1)
    monitor = RecallMonitor(Metrics(), sample_rate=1.0, min_interval_s=60.0)
    request = validate_features(snapshot.manifest.feature_spec, {"region": 1, "history": [3]})
    queries = snapshot.embed([request] * 4)
    served: list[np.ndarray | None] = [h.ids for h in snapshot.search(queries, [10] * 4, [frozenset()] * 4)]
    for _ in range(50):
        monitor.offer(snapshot, queries, served)
    deadline = time.monotonic() + 10
    while not monitor.recalls:
        assert time.monotonic() < deadline, "the one check never ran"
        time.sleep(0.05)
    time.sleep(0.2)
    monitor.close()
    assert len(monitor.recalls) == 1
