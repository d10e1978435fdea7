"""Searching an ebr index with per-call parameters, so one loaded index serves any snapshot's defaults."""

from __future__ import annotations

import faiss
import numpy as np

from index.manifest import SearchDefaults


def search_parameters(index: faiss.Index, defaults: SearchDefaults) -> faiss.SearchParameters | None:
    ivf_params = faiss.SearchParametersIVF()
    ivf_params.nprobe = defaults.nprobe
    if isinstance(index, faiss.IndexRefine):
        refine_params = faiss.IndexRefineSearchParameters()
        refine_params.k_factor = defaults.refine_factor
        refine_params.base_index_params = ivf_params
        # SWIG keeps only a raw pointer to the base parameters; hold them alive with the outer object.
        refine_params.referenced_objects = [ivf_params]  # type: ignore[attr-defined]
        return refine_params
    if faiss.try_extract_index_ivf(index) is not None:
        return ivf_params
    return None


def search(
    index: faiss.Index, queries: np.ndarray, k: int, params: faiss.SearchParameters | None
) -> tuple[np.ndarray, np.ndarray]:
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)
    return scores, rows


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k largest inner products, by brute force (no copy of `embeddings` into an index)."""
    xb = np.ascontiguousarray(embeddings, dtype=np.float32)
    xq = np.ascontiguousarray(queries, dtype=np.float32)
    return faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def per_query_recall(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """For each query, the share of its exact top-k rows that `found` returned."""
    k = exact.shape[1]
    return np.array([len(np.intersect1d(f[f >= 0], e)) / k for f, e in zip(found, exact, strict=True)])


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k rows that `found` returned, averaged over queries."""
    return float(per_query_recall(found, exact).mean())
