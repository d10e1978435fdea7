"""From an export to a bundle in the store: embed the held-out queries with the tower, build, write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from index.build import Device, build_index
from index.bundle import write_bundle
from index.export_dir import Export, embed
from index.golden import make_golden, synthetic_inputs
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
    device: Device = "auto",
) -> Path:
    """Tune and report recall on real users' embeddings when the export has them, else on noisy candidates.

    The golden set takes real users' features too when there are any, and otherwise valid synthetic ones:
    either way it checks, before promotion, that this tower and this index still agree.
    """
    rng = np.random.default_rng(seed)
    session = ort.InferenceSession(str(export.tower), providers=["CPUExecutionProvider"])
    if export.query_inputs:
        queries = embed(session, export.feature_spec, export.query_inputs)
        source = "held-out users through the exported tower"
        chosen = rng.choice(len(queries), size=min(golden_size, len(queries)), replace=False)
        golden_inputs = {name: value[chosen] for name, value in export.query_inputs.items()}
    else:
        picks = rng.choice(len(export.embeddings), size=min(2000, len(export.embeddings)), replace=False)
        noisy = export.embeddings[picks] + rng.normal(0, 0.1, size=(len(picks), export.embeddings.shape[1]))
        queries = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
        source = "candidate embeddings with noise"
        golden_inputs = synthetic_inputs(export.feature_spec, golden_size, rng)
    golden = make_golden(session, export.feature_spec, golden_inputs, export.embeddings, k)
    built = build_index(export.embeddings, queries, source, k, target_recall, factory, seed=seed, device=device)
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
