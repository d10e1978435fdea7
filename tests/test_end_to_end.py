"""The slice end to end: a trained export becomes a bundle, a real `ebr serve` process serves it over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from index.export_dir import read_export
from index.search import exact_top_k
from tests.conftest import ServerFactory, TrainedExport

K = 50


def test_served_results_match_exact_search_and_the_planted_structure(
    trained_export: TrainedExport, store: Path, server_factory: ServerFactory
) -> None:
    from export.pipeline import query_inputs

    data = trained_export.data
    export = read_export(trained_export.root)
    server = server_factory(store)
    server.wait_ready()

    users = np.unique(data.test[:, 0])[:100]
    inputs = query_inputs(data, users)
    session = ort.InferenceSession(str(export.tower), providers=["CPUExecutionProvider"])
    exact = export.candidate_ids[exact_top_k(export.embeddings, session.run(["embedding"], inputs)[0], K)]

    hits = overlaps = in_preferred = 0
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for row, user in enumerate(users):
            features = {name: values[row].tolist() for name, values in inputs.items()}
            features["history"] = [v for v in features["history"] if v >= 0]
            response = client.post("/v1/retrieve", json={"features": features, "k": K})
            assert response.status_code == 200, response.text
            body = response.json()
            ids = body["ids"]
            assert len(ids) == K == len(set(ids))
            assert body["scores"] == sorted(body["scores"], reverse=True)
            assert response.headers["X-Snapshot-Version"] == body["snapshot"] == "20260101T000000Z"
            overlaps += len(set(ids) & set(exact[row].tolist()))
            preferred = set(data.user_clusters[user].tolist())
            in_preferred += sum(int(data.candidate_cluster[i]) in preferred for i in ids)
            hits += 1

    recall_vs_exact = overlaps / (K * hits)
    preferred_share = in_preferred / (K * hits)
    chance = 2 / data.candidate_cluster.max()
    print(f"served recall@{K} vs exact {recall_vs_exact:.3f}; preferred-cluster share {preferred_share:.3f}")
    assert recall_vs_exact >= 0.9
    assert preferred_share >= 8 * chance
