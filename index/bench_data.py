"""Synthetic candidate and query embeddings with the structure of real ones, for the index benchmark."""

from __future__ import annotations

import numpy as np


def clustered_embeddings(
    count: int, dim: int, components: int = 1000, spread: float = 1.0, seed: int = 0, chunk: int = 262_144
) -> np.ndarray:
    """L2-normalised draws from a Gaussian mixture: random unit centres ("topics"), popularity that falls off
    as a power law across them, and a per-topic width around `spread` (the noise norm relative to the
    centre's). Neighbourhoods overlap across topics, as real two-tower embeddings' do, so IVF has to probe
    several lists. Rows are independent draws, so any split into candidates and held-out queries gives both
    one distribution; the same arguments always draw the same rows.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((components, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    popularity = 1.0 / np.arange(1, components + 1) ** 0.7
    popularity /= popularity.sum()
    widths = (rng.uniform(0.6, 1.4, components) * spread / np.sqrt(dim)).astype(np.float32)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        topic = rng.choice(components, size=size, p=popularity)
        rows = centres[topic] + rng.standard_normal((size, dim), dtype=np.float32) * widths[topic, None]
        out[start : start + size] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out
