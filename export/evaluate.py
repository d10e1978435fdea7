"""Offline evaluation: full-corpus Recall@K and NDCG@K with training interactions excluded (LightGCN protocol)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Scorer = Callable[[np.ndarray, int], np.ndarray]


def exact_scorer(candidates: np.ndarray) -> Scorer:
    def top(queries: np.ndarray, k: int) -> np.ndarray:
        scores = queries @ candidates.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        rows = np.arange(len(queries))[:, None]
        return np.asarray(part[rows, np.argsort(-scores[rows, part], axis=1)])

    return top


def recall_ndcg(
    user_embeddings: np.ndarray,
    top: Scorer,
    train: np.ndarray,
    test: np.ndarray,
    k: int = 20,
    users: np.ndarray | None = None,
) -> tuple[float, float]:
    """Mean Recall@k and NDCG@k over users with test interactions, train items excluded from the ranking."""
    test_sets = _grouped(test)
    train_sets = _grouped(train)
    evaluated = np.array(sorted(test_sets)) if users is None else np.array([u for u in users if u in test_sets])
    widest = max((len(train_sets.get(int(u), ())) for u in evaluated), default=0)
    recalls, ndcgs = [], []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for start in range(0, len(evaluated), 1024):
        chunk = evaluated[start : start + 1024]
        ranked = top(user_embeddings[chunk], k + widest)
        for user, row in zip(chunk, ranked, strict=True):
            seen = train_sets.get(int(user), set())
            kept = [c for c in row if c not in seen][:k]
            relevant = test_sets[int(user)]
            hits = np.array([c in relevant for c in kept], dtype=np.float64)
            recalls.append(hits.sum() / len(relevant))
            ideal = discounts[: min(len(relevant), k)].sum()
            ndcgs.append(float((hits * discounts[: len(hits)]).sum() / ideal))
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def _grouped(pairs: np.ndarray) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for user, item in pairs:
        out.setdefault(int(user), set()).add(int(item))
    return out
