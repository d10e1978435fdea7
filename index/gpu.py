"""FAISS on a GPU, when the installed FAISS has one: used to speed up building, never needed to serve."""

from __future__ import annotations

import faiss


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def gpu_clustering_index(dim: int) -> faiss.Index | None:
    """An exact inner-product index on every GPU, for k-means to assign its points with; None without a GPU."""
    if gpu_count() == 0:
        return None
    return faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))


def gpu_copy(index: faiss.Index) -> faiss.Index | None:
    """A copy of `index` on every GPU (for the coarse quantizer while adding); None without a GPU."""
    if gpu_count() == 0:
        return None
    return faiss.index_cpu_to_all_gpus(index)
