from __future__ import annotations

import faiss
import numpy as np
import pytest

from index.bench_data import clustered_embeddings
from index.build import (
    CONFIDENCE_Z,
    REFINE_FACTORS,
    BuiltIndex,
    _probe_grid,
    add_in_chunks,
    build_index,
    choose_factory,
    tune_defaults,
)
from index.gpu import gpu_count
from index.manifest import SearchDefaults
from index.search import exact_top_k, per_query_recall, recall_at_k, search, search_parameters

NUM, DIM = 5000, 32
Data = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def data() -> Data:
    """Candidates, queries for the build and queries it never sees, all from one mixture."""
    rows = clustered_embeddings(NUM + 800, DIM, components=50, seed=3)
    return rows[:NUM], rows[NUM : NUM + 400], rows[NUM + 400 :]


@pytest.fixture(scope="module")
def built(data: Data) -> BuiltIndex:
    candidates, queries, _ = data
    return build_index(candidates, queries, "test mixture", k=100, target_recall=0.95, device="cpu")


def test_factory_is_ivf_fast_scan_pq_with_refinement_sized_by_count() -> None:
    assert choose_factory(1_000_000, 64) == "IVF1024,PQ64x4fsr,Refine(SQ8)"
    assert choose_factory(5000, 32) == "IVF128,PQ32x4fsr,Refine(SQ8)"
    for num in (40, 1000, 20_000, 3_000_000):
        lists = int(choose_factory(num, 16).split(",")[0].removeprefix("IVF"))
        assert lists & (lists - 1) == 0 and num / lists >= 39


def test_build_reaches_the_target_on_held_out_queries(built: BuiltIndex, data: Data) -> None:
    report = built.report
    assert built.factory == choose_factory(NUM, DIM)
    assert built.index.ntotal == NUM and built.index.d == DIM
    assert report.k == 100 and report.target_recall == 0.95
    assert report.queries == 200 and report.tune_queries == 200
    assert report.query_source == "test mixture" and report.device == "cpu"
    assert report.train_size == NUM  # 50 per list would exceed the candidates
    assert report.build_seconds >= report.train_seconds + report.add_seconds > 0  # type: ignore[operator]
    # Tuned on a one-sided 95% bound, so queries from the same distribution that nobody tuned on reach it too.
    assert report.recall_at_k >= 0.95
    candidates, _, unseen = data
    found = search(built.index, unseen, 100, search_parameters(built.index, built.search_defaults))[1]
    assert recall_at_k(found, exact_top_k(candidates, unseen, 100)) >= 0.94


def test_tuning_picks_the_smallest_nprobe_that_reaches_the_target(built: BuiltIndex, data: Data) -> None:
    candidates, queries, _ = data
    exact = exact_top_k(candidates, queries, 100)
    chosen = tune_defaults(built.index, queries, exact, 100, 0.95)
    grid = _probe_grid(128)
    assert chosen.nprobe in grid and chosen.refine_factor in REFINE_FACTORS

    def bound(nprobe: int, factor: float) -> float:
        defaults = SearchDefaults(nprobe=nprobe, refine_factor=factor)
        found = search(built.index, queries, 100, search_parameters(built.index, defaults))[1]
        recalls = per_query_recall(found, exact)
        return float(recalls.mean() - CONFIDENCE_Z * recalls.std() / np.sqrt(len(recalls)))

    assert bound(chosen.nprobe, chosen.refine_factor) >= 0.95
    assert bound(grid[grid.index(chosen.nprobe) - 1], REFINE_FACTORS[-1]) < 0.95
    if chosen.refine_factor > REFINE_FACTORS[0]:
        smaller = REFINE_FACTORS[REFINE_FACTORS.index(chosen.refine_factor) - 1]
        assert bound(chosen.nprobe, smaller) < 0.95


def test_an_unreachable_target_gets_the_most_accurate_defaults(built: BuiltIndex, data: Data) -> None:
    candidates, queries, _ = data
    exact = exact_top_k(candidates, queries[:50], 10)
    chosen = tune_defaults(built.index, queries[:50], exact, 10, target_recall=1.01)
    assert chosen == SearchDefaults(nprobe=128, refine_factor=REFINE_FACTORS[-1])


def test_probe_grid_steps_by_about_root_two() -> None:
    assert _probe_grid(64) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    assert _probe_grid(1) == [1]
    assert _probe_grid(100)[-1] == 100


def test_an_explicit_factory_without_ivf_is_exact(data: Data) -> None:
    candidates, queries, _ = data
    flat = build_index(candidates[:1000], queries[:100], "test", k=10, factory="Flat", device="cpu")
    assert flat.search_defaults == SearchDefaults(nprobe=1, refine_factor=1.0)
    assert flat.report.recall_at_k == 1.0


def test_exact_top_k_is_brute_force(data: Data) -> None:
    candidates, queries, _ = data
    expected = np.argsort(-(queries[:20] @ candidates.T), axis=1)[:, :10]
    assert recall_at_k(exact_top_k(candidates, queries[:20], 10), expected) == 1.0


@pytest.mark.skipif(gpu_count() > 0, reason="only meaningful without a GPU")
def test_asking_for_a_gpu_without_one_fails_loudly(data: Data) -> None:
    candidates, queries, _ = data
    with pytest.raises(RuntimeError, match="FAISS sees no GPU"):
        build_index(candidates, queries, "test", device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() == 0, reason="needs a GPU that FAISS can use")
def test_gpu_build_clusters_on_the_gpu_and_writes_a_cpu_index(data: Data) -> None:
    candidates, queries, unseen = data
    gpu_built = build_index(candidates, queries, "test mixture", device="cuda")
    assert gpu_built.report.device == "cuda"
    ivf = faiss.extract_index_ivf(gpu_built.index)
    assert ivf.clustering_index is None  # nothing on the GPU is left inside what gets written
    assert isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlatIP)
    faiss.serialize_index(gpu_built.index)
    assert gpu_built.report.recall_at_k >= 0.95
    found = search(gpu_built.index, unseen, 100, search_parameters(gpu_built.index, gpu_built.search_defaults))[1]
    assert recall_at_k(found, exact_top_k(candidates, unseen, 100)) >= 0.94


def test_too_few_queries_to_tune_and_report(data: Data) -> None:
    candidates, queries, _ = data
    with pytest.raises(ValueError, match="at least two queries"):
        build_index(candidates, queries[:1], "test", device="cpu")


def test_adding_through_another_copy_of_the_centroids_gives_the_same_index(data: Data) -> None:
    """The GPU build assigns rows with a GPU copy of the centroids: swapped in for the add, then swapped back."""
    candidates = data[0]
    factory = choose_factory(NUM, DIM)
    plain, swapped = (faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT) for _ in range(2))
    for index in (plain, swapped):
        index.train(candidates)
    ivf = faiss.extract_index_ivf(swapped)
    own = ivf.quantizer
    add_in_chunks(plain, candidates, Silent())
    add_in_chunks(swapped, candidates, Silent(), coarse=faiss.clone_index(own))
    assert ivf.quantizer.this == own.this  # the index's own quantizer is back, so it writes as a CPU index
    assert np.array_equal(faiss.serialize_index(plain), faiss.serialize_index(swapped))

    # And the stand-in really does the assigning: with its centroids reordered, rows land in other lists.
    reordered = faiss.IndexFlatIP(DIM)
    reordered.add(own.reconstruct_n(0, own.ntotal)[::-1].copy())
    swapped.reset()
    add_in_chunks(swapped, candidates, Silent(), coarse=reordered)
    assert not np.array_equal(faiss.serialize_index(plain), faiss.serialize_index(swapped))


class Silent:
    def advance(self, steps: int = 1, note: str = "") -> None:
        pass
