"""The golden query set: tower inputs with the exact top-k candidates of their embeddings, for the quality gate."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from index.bundle import Golden
from index.export_dir import embed
from index.manifest import FeatureSpec
from index.search import exact_top_k


def make_golden(
    session: ort.InferenceSession, spec: FeatureSpec, inputs: dict[str, np.ndarray], embeddings: np.ndarray, k: int
) -> Golden:
    queries = embed(session, spec, inputs)
    return Golden(inputs=inputs, exact_rows=exact_top_k(embeddings, queries, min(k, len(embeddings))))


def synthetic_inputs(spec: FeatureSpec, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Valid tower inputs for `count` requests, for an export that holds no real users' features."""
    inputs: dict[str, np.ndarray] = {}
    for field in spec.fields:
        if field.kind == "numeric":
            inputs[field.name] = rng.standard_normal(count).astype(np.float32)
            continue
        assert field.vocab_size is not None
        if field.kind == "categorical":
            inputs[field.name] = rng.integers(0, field.vocab_size, size=count, dtype=np.int64)
            continue
        assert field.max_length is not None
        lengths = rng.integers(0, field.max_length + 1, size=count)
        matrix = np.full((count, max(1, int(lengths.max()))), -1, dtype=np.int64)
        for row, length in enumerate(lengths):
            matrix[row, :length] = rng.integers(0, field.vocab_size, size=length)
        inputs[field.name] = matrix
    return inputs
