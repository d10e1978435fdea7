from __future__ import annotations

import numpy as np

from index.bench import run_index_bench
from index.bench_data import clustered_embeddings


def test_clustered_embeddings_are_normalised_and_reproducible() -> None:
    rows = clustered_embeddings(5000, 16, components=20, seed=1, chunk=1000)
    assert rows.shape == (5000, 16) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(rows, clustered_embeddings(5000, 16, components=20, seed=1, chunk=1000))
    # Clustered: a point's nearest neighbour is far closer than a random pair.
    sims = rows[:200] @ rows[200:].T
    assert sims.max(axis=1).mean() > 0.8 > abs(sims.mean()) + 0.5


def test_a_small_run_reaches_the_target_on_unseen_queries() -> None:
    result = run_index_bench(num=20_000, dim=32, queries=200, build_queries=200, threads=2)
    assert result.num == 20_000 and result.factory.startswith("IVF") and "x4fsr" in result.factory
    assert result.recall >= 0.94 and result.build_recall >= 0.95
    assert {"index.faiss", "candidate_ids.npy", "user_tower.onnx", "golden.npz", "manifest.json"} == set(
        result.bundle_bytes
    )
    assert result.qps > 0 and result.flat_qps > 0
