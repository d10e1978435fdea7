"""`ebr bench index`: build a snapshot from synthetic clustered embeddings and measure it against exact search.

Three disjoint sets of rows come from one distribution: the candidates, the queries the build tunes and
reports on (standing in for an export's held-out users), and the benchmark's own queries, which nothing in
the build has seen: recall and throughput are measured on those, and exact (flat) search over the same
candidates runs in the same process for comparison, since on a shared machine only the ratio is stable.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index.bench_data import clustered_embeddings
from index.build import build_index
from index.bundle import Golden, open_bundle, write_bundle
from index.linear_tower import write_linear_tower
from index.manifest import FeatureField, FeatureSpec
from index.search import recall_at_k, search, search_parameters

GOLDEN_QUERIES = 256


@dataclass(frozen=True)
class IndexBench:
    num: int
    dim: int
    factory: str
    nprobe: int
    refine_factor: float
    build_seconds: float
    train_seconds: float
    add_seconds: float
    build_cpu_seconds: float
    build_recall: float
    recall: float
    bundle_bytes: dict[str, int]
    queries: int
    threads: int
    qps: float
    flat_qps: float
    load_average: float

    def lines(self, k: int) -> list[str]:
        total_mb = sum(self.bundle_bytes.values()) / 1e6
        files = ", ".join(f"{name} {size / 1e6:.1f}" for name, size in sorted(self.bundle_bytes.items()))
        return [
            f"candidates      {self.num:,} x {self.dim}",
            f"factory         {self.factory}",
            f"defaults        nprobe={self.nprobe} refine_factor={self.refine_factor:g}",
            f"build seconds   {self.build_seconds:.1f} (train {self.train_seconds:.1f}, add {self.add_seconds:.1f}, "
            f"exact search + tuning {self.build_seconds - self.train_seconds - self.add_seconds:.1f}); "
            f"{self.build_cpu_seconds:.1f} CPU-seconds over {self.threads} threads",
            f"recall@{k}      {self.recall:.4f} on {self.queries} unseen queries at the defaults "
            f"(build report: {self.build_recall:.4f})",
            f"bundle MB       {total_mb:.1f} ({files})",
            f"throughput      {self.qps:,.0f} queries/s IVF-PQ vs {self.flat_qps:,.0f} queries/s exact flat "
            f"({self.qps / self.flat_qps:.1f}x), batch of {self.queries}, {self.threads} threads",
            f"machine         {os.cpu_count()} cores, 1-minute load average {self.load_average:.1f} at the end "
            "(other processes' load slows every figure above but the ratio)",
        ]


def run_index_bench(
    num: int = 1_000_000,
    dim: int = 64,
    queries: int = 1000,
    build_queries: int = 500,
    threads: int = 2,
    k: int = 100,
    target_recall: float = 0.95,
    spread: float = 1.0,
    seed: int = 0,
) -> IndexBench:
    faiss.omp_set_num_threads(threads)
    rows = clustered_embeddings(num + build_queries + queries, dim, spread=spread, seed=seed)
    candidates, tuning, held_out = rows[:num], rows[num : num + build_queries], rows[num + build_queries :]
    built = build_index(candidates, tuning, "synthetic mixture, held-out draws", k, target_recall, seed=seed)

    flat = faiss.IndexFlatIP(dim)
    flat.add(candidates)
    started = time.perf_counter()
    exact = flat.search(held_out, k)[1]
    flat_seconds = time.perf_counter() - started
    del flat

    spec = FeatureSpec(fields=tuple(FeatureField(name=f"x{i}", kind="numeric", dtype="float32") for i in range(dim)))
    golden = Golden(
        inputs={f"x{i}": held_out[:GOLDEN_QUERIES, i].copy() for i in range(dim)}, exact_rows=exact[:GOLDEN_QUERIES]
    )
    with tempfile.TemporaryDirectory(prefix="ebr-bench-") as work:
        tower = _identity_tower(Path(work) / "tower.onnx", spec, dim)
        store = Path(work) / "store"
        store.mkdir()
        ids = np.arange(num, dtype=np.int64)
        bundle = write_bundle(store, "bench", tower, built, ids, spec, {"dataset": "synthetic mixture"}, golden)
        opened = open_bundle(bundle)
        sizes = {name: entry.size for name, entry in opened.manifest.files.items()}
        sizes["manifest.json"] = (bundle / "manifest.json").stat().st_size
        # Searched as the service would: the index read back from the bundle, with the manifest's defaults.
        index = opened.index
        params = search_parameters(index, opened.manifest.search_defaults)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            found = search(index, held_out, k, params)[1]
            timings.append(time.perf_counter() - started)
    report = built.report
    return IndexBench(
        num=num,
        dim=dim,
        factory=built.factory,
        nprobe=built.search_defaults.nprobe,
        refine_factor=built.search_defaults.refine_factor,
        build_seconds=report.build_seconds,
        train_seconds=report.train_seconds or 0.0,
        add_seconds=report.add_seconds or 0.0,
        build_cpu_seconds=report.cpu_seconds or 0.0,
        build_recall=report.recall_at_k,
        recall=recall_at_k(found, exact),
        bundle_bytes=sizes,
        queries=len(held_out),
        threads=threads,
        qps=len(held_out) / statistics.median(timings),
        flat_qps=len(held_out) / flat_seconds,
        load_average=os.getloadavg()[0],
    )


def omp_warning() -> str | None:
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        return "note: OMP_WAIT_POLICY is not PASSIVE; spinning OpenMP threads skew timings on a shared CPU"
    return None


def _identity_tower(path: Path, spec: FeatureSpec, dim: int) -> Path:
    """The benchmark's tower maps its features (the query's coordinates) to themselves, normalised."""
    return write_linear_tower(path, spec, dim, np.random.default_rng(0), np.eye(dim, dtype=np.float32))
