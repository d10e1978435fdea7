"""From an export to a bundle in the store: embed the held-out queries with the tower, build, write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from index.build import build_index
from index.bundle import Golden, write_bundle
from index.export_dir import Export, embed
from index.search import exact_top_k
from index.store import LocalStore
from index.versions import new_version


def build_snapshot(
    export: Export,
    store: LocalStore,
    version: str | None = None,
    k: int = 100,
    target_recall: float = 0.95,
    factory: str | None = None,
    golden_size: int = 256,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    golden = None
    if export.query_inputs:
        session = ort.InferenceSession(str(export.tower), providers=["CPUExecutionProvider"])
        queries = embed(session, export.feature_spec, export.query_inputs)
        source = "held-out users through the exported tower"
        count = len(queries)
        chosen = rng.choice(count, size=min(golden_size, count), replace=False)
        golden = Golden(
            inputs={name: value[chosen] for name, value in export.query_inputs.items()},
            exact_rows=exact_top_k(export.embeddings, queries[chosen], min(k, len(export.embeddings))),
        )
    else:
        picks = rng.choice(len(export.embeddings), size=min(2000, len(export.embeddings)), replace=False)
        noisy = export.embeddings[picks] + rng.normal(0, 0.1, size=(len(picks), export.embeddings.shape[1]))
        queries = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
        source = "candidate embeddings with noise"
    built = build_index(export.embeddings, queries, source, k, target_recall, factory, seed=seed)
    store.root.mkdir(parents=True, exist_ok=True)
    version = version or new_version(store.versions())
    return write_bundle(
        store.root,
        version,
        export.tower,
        built,
        export.candidate_ids,
        export.feature_spec,
        export.provenance,
        golden,
    )
