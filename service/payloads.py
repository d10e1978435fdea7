"""Valid request payloads made from a feature spec: for the curl example, load tests and benchmarks."""

from __future__ import annotations

import numpy as np

from index.manifest import FeatureSpec


def random_features(spec: FeatureSpec, rng: np.random.Generator, history: int = 5) -> dict[str, object]:
    out: dict[str, object] = {}
    for field in spec.fields:
        if field.kind == "numeric":
            out[field.name] = round(float(rng.normal(0.5, 0.2)), 3)
        elif field.kind == "categorical":
            assert field.vocab_size is not None
            out[field.name] = int(rng.integers(0, field.vocab_size))
        else:
            assert field.vocab_size is not None and field.max_length is not None
            size = min(history, field.max_length, field.vocab_size)
            out[field.name] = [int(v) for v in rng.choice(field.vocab_size, size=size, replace=False)]
    return out


def example_payload(spec: FeatureSpec, k: int = 10, seed: int = 0) -> dict[str, object]:
    return {"features": random_features(spec, np.random.default_rng(seed)), "k": k}
