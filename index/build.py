"""Building an IVF-PQ index, tuning its search defaults and measuring its recall against exact search."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from index.gpu import gpu_clustering_index, gpu_copy
from index.manifest import BuildReport, SearchDefaults
from index.progress import Tracker, track
from index.search import exact_top_k, per_query_recall, search, search_parameters

Device = Literal["auto", "cpu", "cuda"]
ADD_CHUNK = 100_000
REFINE_FACTORS = (1.0, 2.0, 4.0, 8.0, 16.0)
# One-sided 95% bound: defaults tuned on a sample must still reach the target on queries they never saw.
CONFIDENCE_Z = 1.645


@dataclass(frozen=True)
class BuiltIndex:
    index: faiss.Index
    factory: str
    search_defaults: SearchDefaults
    report: BuildReport


def choose_factory(num_candidates: int, dim: int) -> str:
    """IVF with about 2·√N lists (a power of two, each trained on ≥ 39 points), 4-bit fast-scan PQ on residuals
    with one sub-quantizer per dimension, and an SQ8 refinement.

    Training and assigning cost in proportion to the number of lists, while fast-scan makes scanning long
    lists cheap, so fewer lists than the 4-16·√N usual for plain PQ build faster at the same search cost.
    At 4 bits, sub-quantizers of two dimensions rank the shortlist too coarsely for recall@100 ≥ 0.95 without
    a large refine factor, which halves throughput; one dimension each keeps the factor small. Re-ranking
    with 8-bit scalar-quantised vectors recovers the rest at a quarter of the memory of a flat refinement.
    """
    lists = max(1, min(int(2 * math.sqrt(num_candidates)), num_candidates // 39))
    lists = 2 ** int(math.log2(lists))
    return f"IVF{lists},PQ{dim}x4fsr,Refine(SQ8)"


def default_train_size(num_candidates: int, lists: int) -> int:
    """50 points per list: FAISS wants at least 39, and more only lengthens k-means."""
    return min(num_candidates, max(50 * lists, 10_000))


def build_index(
    embeddings: np.ndarray,
    queries: np.ndarray,
    query_source: str,
    k: int = 100,
    target_recall: float = 0.95,
    factory: str | None = None,
    train_size: int | None = None,
    seed: int = 0,
    max_queries: int = 500,
    device: Device = "auto",
) -> BuiltIndex:
    """Train on a sample, add everything, then pick the cheapest search defaults that reach `target_recall`.

    At most `max_queries` queries are used (exact search over every candidate is the costly part). Half of
    them tune the defaults; the other half, unseen while tuning, give the reported recall.
    """
    if len(queries) < 2 or max_queries < 2:
        raise ValueError("building needs at least two queries: one half tunes the defaults, the other reports")
    started, cpu_started = time.monotonic(), time.process_time()
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    num, dim = embeddings.shape
    k = min(k, num)
    factory = factory or choose_factory(num, dim)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train_size = min(num, train_size or default_train_size(num, _lists(index)))
    sample = embeddings[np.sort(rng.choice(num, size=train_size, replace=False))]
    with track("build index", total=3 + math.ceil(num / ADD_CHUNK)) as progress:
        used = _train(index, sample, device)
        train_seconds = time.monotonic() - started
        progress.advance(note=f"trained on {used}")
        ivf = faiss.try_extract_index_ivf(index)
        coarse = gpu_copy(ivf.quantizer) if used == "cuda" and ivf is not None else None
        add_in_chunks(index, embeddings, progress, coarse)
        add_seconds = time.monotonic() - started - train_seconds

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        chosen = rng.permutation(len(queries))[:max_queries]
        exact = exact_top_k(embeddings, queries[chosen], k)
        progress.advance(note="exact search")
        half = len(chosen) // 2
        tune, held_out = chosen[:half], chosen[half:]
        defaults = tune_defaults(index, queries[tune], exact[:half], k, target_recall)
        found = search(index, queries[held_out], k, search_parameters(index, defaults))[1]
        recall = float(per_query_recall(found, exact[half:]).mean())
        progress.advance(note="tuned")
    report = BuildReport(
        k=k,
        recall_at_k=round(recall, 4),
        queries=len(held_out),
        query_source=query_source,
        build_seconds=round(time.monotonic() - started, 2),
        train_size=train_size,
        target_recall=target_recall,
        tune_queries=len(tune),
        train_seconds=round(train_seconds, 2),
        add_seconds=round(add_seconds, 2),
        # Beside the wall time: on a shared machine it is what the build itself cost, all threads together.
        cpu_seconds=round(time.process_time() - cpu_started, 2),
        device=used,
    )
    return BuiltIndex(index, factory, defaults, report)


def _train(index: faiss.Index, sample: np.ndarray, device: Device) -> str:
    """Train, running k-means on a GPU when there is one; the index itself always stays on the CPU.

    Returns the device k-means ran on. A GPU failure falls back to the CPU rather than failing the build.
    """
    ivf = faiss.try_extract_index_ivf(index)
    clustering = gpu_clustering_index(index.d) if device != "cpu" and ivf is not None else None
    if ivf is None or clustering is None:
        if device == "cuda":
            raise RuntimeError("device 'cuda' was asked for, but FAISS sees no GPU or there is no IVF to cluster")
        index.train(sample)
        return "cpu"
    ivf.clustering_index = clustering
    try:
        index.train(sample)
        return "cuda"
    except RuntimeError:
        if device == "cuda":
            raise
    finally:
        # The GPU index must neither be written with the bundle nor outlive this build.
        ivf.clustering_index = None  # type: ignore[assignment]
    ivf.quantizer.reset()
    index.train(sample)
    return "cpu"


def add_in_chunks(
    index: faiss.Index, embeddings: np.ndarray, progress: Tracker, coarse: faiss.Index | None = None
) -> None:
    """Add every row; with `coarse` (the IVF's centroids, e.g. on a GPU) assigning rows to lists in its stead.

    Assignment is a brute-force search of every row against every centroid, the costly part of adding.
    The index's own quantizer is put back afterwards, so that what gets written is all on the CPU.
    """
    ivf = faiss.try_extract_index_ivf(index)
    if coarse is None or ivf is None:
        _add_rows(index, embeddings, progress)
        return
    own = ivf.quantizer
    ivf.quantizer = coarse
    try:
        _add_rows(index, embeddings, progress)
    finally:
        ivf.quantizer = own


def _add_rows(index: faiss.Index, embeddings: np.ndarray, progress: Tracker) -> None:
    for start in range(0, len(embeddings), ADD_CHUNK):
        index.add(embeddings[start : start + ADD_CHUNK])
        progress.advance(note="adding")


def tune_defaults(
    index: faiss.Index, queries: np.ndarray, exact: np.ndarray, k: int, target_recall: float
) -> SearchDefaults:
    """The smallest nprobe that reaches the target at the largest refine factor, then the smallest factor that
    still reaches it at that nprobe; the most accurate setting (all lists, largest factor) when none does.

    Scanning lists dominates the cost of a search, so nprobe is minimised first. "Reaches" means the lower
    95% confidence bound of the recall over `queries` does, so held-out queries reach it too. Choosing by a
    cost order rather than by timing keeps the defaults reproducible on a noisy, shared machine.
    """
    lists = _lists(index)
    factors = REFINE_FACTORS if isinstance(index, faiss.IndexRefine) else (1.0,)
    probes = _probe_grid(lists)
    cache: dict[tuple[int, float], bool] = {}

    def reaches(nprobe: int, factor: float) -> bool:
        if (nprobe, factor) not in cache:
            defaults = SearchDefaults(nprobe=nprobe, refine_factor=factor)
            found = search(index, queries, k, search_parameters(index, defaults))[1]
            recalls = per_query_recall(found, exact)
            bound = recalls.mean() - CONFIDENCE_Z * recalls.std() / math.sqrt(len(recalls))
            cache[(nprobe, factor)] = bound >= target_recall
        return cache[(nprobe, factor)]

    widest = factors[-1]
    # Upwards from one list: a search costs about its nprobe, so the failed steps below the answer together
    # cost about as much as the answer itself, where bisecting from all lists would scan everything first.
    nprobe = next((p for p in probes if reaches(p, widest)), None)
    if nprobe is None:
        return SearchDefaults(nprobe=probes[-1], refine_factor=widest)
    factor = next(f for f in factors if reaches(nprobe, f))
    return SearchDefaults(nprobe=nprobe, refine_factor=factor)


def _probe_grid(lists: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, … up to the number of lists: steps of about √2."""
    grid = {lists}
    power = 1
    while power <= lists:
        grid |= {power, min(lists, power * 3 // 2)} if power > 1 else {1}
        power *= 2
    return sorted(grid)


def _lists(index: faiss.Index) -> int:
    ivf = faiss.try_extract_index_ivf(index)
    return int(ivf.nlist) if ivf is not None else 1
