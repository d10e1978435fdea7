"""A loaded snapshot: tower and index as one unit, and the compute a request runs on it. No HTTP here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from index.bundle import OpenBundle, open_bundle
from index.manifest import Manifest
from index.search import recall_at_k, search, search_parameters
from service.devices import Placement
from service.validation import Encoded, encode_batch


class QualityGateError(Exception):
    pass


@dataclass(frozen=True)
class Hits:
    ids: list[int]
    scores: list[float]


@dataclass
class Snapshot:
    bundle: OpenBundle
    placement: Placement
    index: faiss.Index
    params: faiss.SearchParameters | None
    loaded_at: float = field(default_factory=time.time)
    gate: dict[str, float] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def resident_bytes(self) -> int:
        return sum(entry.size for entry in self.manifest.files.values())

    def embed(self, requests: list[Encoded]) -> np.ndarray:
        batch = encode_batch(self.manifest.feature_spec, requests)
        output = self.bundle.session.run([self.manifest.feature_spec.output], batch.inputs)[0]
        return np.asarray(output, dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, excludes: list[frozenset[int]]) -> list[Hits]:
        """Top-k per query, excluded ids removed, over-fetching so that a full k remains when it can."""
        total = self.manifest.num_candidates
        fetch = min(total, k + max((len(e) for e in excludes), default=0))
        scores, rows = search(self.index, queries, fetch, self.params)
        ids = np.where(rows >= 0, self.bundle.candidate_ids[np.maximum(rows, 0)], -1)
        out = []
        for query_ids, query_scores, exclude in zip(ids, scores, excludes, strict=True):
            keep = query_ids >= 0
            if exclude:
                keep &= ~np.isin(query_ids, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
            out.append(Hits(query_ids[keep][:k].tolist(), query_scores[keep][:k].tolist()))
        return out

    def warm_up(self, queries: int = 64) -> None:
        """Run the tower and the index once before serving, so the first request pays no cold start."""
        golden = self.bundle.golden
        if golden is not None:
            vectors = self.bundle.session.run([self.manifest.feature_spec.output], golden.inputs)[0]
        else:
            rng = np.random.default_rng(0)
            vectors = rng.standard_normal((queries, self.manifest.dim)).astype(np.float32)
            faiss.normalize_L2(vectors)
        search(self.index, vectors, min(100, self.manifest.num_candidates), self.params)

    def run_quality_gate(self, threshold: float) -> dict[str, float]:
        """Golden queries through tower and index must reach `threshold` recall@K of their exact answers."""
        golden = self.bundle.golden
        if golden is None:
            return {}
        queries = self.bundle.session.run([self.manifest.feature_spec.output], golden.inputs)[0]
        k = golden.exact_rows.shape[1]
        rows = search(self.index, queries, k, self.params)[1]
        recall = recall_at_k(rows, golden.exact_rows)
        self.gate = {"golden_recall": round(recall, 4), "golden_queries": float(len(queries))}
        if recall < threshold:
            raise QualityGateError(
                f"{self.version}: golden recall@{k} {recall:.3f} is below the gate's {threshold:.3f}"
            )
        return self.gate

    def golden_answers(self) -> np.ndarray | None:
        """This snapshot's answers to its golden queries, as candidate ids, to compare two snapshots."""
        golden = self.bundle.golden
        if golden is None:
            return None
        queries = self.bundle.session.run([self.manifest.feature_spec.output], golden.inputs)[0]
        rows = search(self.index, queries, golden.exact_rows.shape[1], self.params)[1]
        return np.asarray(self.bundle.candidate_ids[np.maximum(rows, 0)])


def load_snapshot(path: Path, placement: Placement, threads: int, mmap_index: bool = False) -> Snapshot:
    bundle = open_bundle(path, placement.onnx_providers, threads, mmap_index=mmap_index)
    index = placement.place_index(bundle.index)
    return Snapshot(bundle, placement, index, search_parameters(bundle.index, bundle.manifest.search_defaults))
