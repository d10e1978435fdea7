"""Offline evaluation: full-corpus Recall@K and NDCG@K with training interactions excluded (LightGCN protocol),
overall and on the cold-start slice, by exact search or through a built IVF-PQ index."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from export.interactions import InteractionData
from index.build import BuiltIndex, build_index
from index.search import search, search_parameters

Scorer = Callable[[np.ndarray, int], np.ndarray]
COLD_SHARE = 0.2


def exact_scorer(candidates: np.ndarray) -> Scorer:
    """Brute force over every candidate (torch's top-k is several times faster than numpy's argpartition)."""
    table = torch.from_numpy(np.ascontiguousarray(candidates, dtype=np.float32))

    def top(queries: np.ndarray, k: int) -> np.ndarray:
        scores = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)) @ table.T
        return torch.topk(scores, k, dim=1, sorted=True).indices.numpy()

    return top


def index_scorer(candidates: np.ndarray, queries: np.ndarray, seed: int = 0) -> tuple[Scorer, BuiltIndex]:
    """Search through the IVF-PQ index `ebr build-index` would build, tuned as it would tune it."""
    built = build_index(candidates, queries, "evaluated users through the exported tower", seed=seed)
    params = search_parameters(built.index, built.search_defaults)

    def top(batch: np.ndarray, k: int) -> np.ndarray:
        return search(built.index, batch, k, params)[1]

    return top, built


@dataclass(frozen=True)
class Ranking:
    """Per evaluated user: Recall@k and NDCG@k, and whether the user is in the cold-start slice."""

    users: np.ndarray
    recall: np.ndarray
    ndcg: np.ndarray
    cold: np.ndarray

    def metrics(self, k: int, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}recall@{k}": round(float(self.recall.mean()), 4),
            f"{prefix}ndcg@{k}": round(float(self.ndcg.mean()), 4),
            f"{prefix}cold_recall@{k}": round(float(self.recall[self.cold].mean()), 4),
            f"{prefix}cold_ndcg@{k}": round(float(self.ndcg[self.cold].mean()), 4),
        }


def cold_slice(data: InteractionData, users: np.ndarray) -> np.ndarray:
    """The fifth of `users` with the fewest training interactions (ties by user id), as a mask."""
    order = np.argsort(data.train_counts()[users], kind="stable")
    cold = np.zeros(len(users), dtype=bool)
    cold[order[: math.ceil(COLD_SHARE * len(users))]] = True
    return cold


def rank(data: InteractionData, user_embeddings: np.ndarray, top: Scorer, k: int = 20, chunk: int = 512) -> Ranking:
    """Rank the full corpus for every user with test interactions; `user_embeddings` has one row per user.

    A user's train candidates (and, in a friend graph, the user itself) are removed from its ranking, so the
    scorer is asked for k plus as many as it may have to skip; users are chunked by that count.
    """
    n = data.num_candidates
    excluded = data.train[:, 0] * n + data.train[:, 1]
    if data.candidates_are_users:
        everyone = np.arange(data.num_users)
        excluded = np.concatenate([excluded, everyone * n + everyone])
    excluded = np.unique(excluded)
    relevant = np.unique(data.test[:, 0] * n + data.test[:, 1])
    users, test_counts = np.unique(relevant // n, return_counts=True)
    skip = np.bincount(excluded // n, minlength=data.num_users)[users]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(test_counts, k) - 1]
    recall, ndcg = np.zeros(len(users)), np.zeros(len(users))
    by_skip = np.argsort(skip, kind="stable")
    for start in range(0, len(users), chunk):
        rows = by_skip[start : start + chunk]
        chunk_users = users[rows]
        ranked = top(user_embeddings[chunk_users], min(n, k + int(skip[rows].max())))
        codes = chunk_users[:, None] * n + ranked
        kept = (ranked >= 0) & ~_contains(excluded, codes)
        position = np.cumsum(kept, axis=1) - 1
        hits = kept & (position < k) & _contains(relevant, codes)
        recall[rows] = hits.sum(1) / test_counts[rows]
        gains = np.where(hits, discounts[np.clip(position, 0, k - 1)], 0.0)
        ndcg[rows] = gains.sum(1) / ideal[rows]
    return Ranking(users, recall, ndcg, cold_slice(data, users))


def _contains(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Membership by binary search: np.isin would re-sort the large side for every chunk."""
    at = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    return np.asarray(sorted_codes[at] == codes)


def set_faiss_threads(threads: int) -> None:
    faiss.omp_set_num_threads(threads)
