"""A loaded snapshot: tower and index as one unit, and the compute a request runs on it. No HTTP here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from index.bundle import OpenBundle, no_pacing, open_bundle
from index.manifest import Manifest
from index.search import recall_at_k, search, search_parameters
from service.devices import Placement
from service.payloads import random_features
from service.validation import Encoded, encode_batch, validate_features


class QualityGateError(Exception):
    pass


class Hits(NamedTuple):
    """One query's answer as numpy rows: they serialise straight to JSON, with no Python number per hit."""

    ids: np.ndarray
    scores: np.ndarray


@dataclass
class Snapshot:
    bundle: OpenBundle
    placement: Placement
    index: faiss.Index
    params: faiss.SearchParameters | None
    gate: dict[str, float] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    def embed(self, requests: list[Encoded]) -> np.ndarray:
        inputs = encode_batch(self.manifest.feature_spec, requests)
        output = self.bundle.session.run([self.manifest.feature_spec.output], inputs)[0]
        return np.asarray(output, dtype=np.float32)

    def search(self, queries: np.ndarray, ks: list[int], excludes: list[frozenset[int]]) -> list[Hits]:
        """Top-k per query with its excluded ids removed, over-fetching so a full k remains when it can.

        Queries are searched in groups by fetch size, one FAISS call per group: exactly k without exclusions
        (the common case, and no wasted work), else k plus the exclusions rounded up to a power of two, which
        keeps the groups few. A request's answer depends only on its own k and exclusions, never on what it
        was batched with.
        """
        total = self.manifest.num_candidates
        fetches = [min(total, _bucket(k + len(e)) if e else k) for k, e in zip(ks, excludes, strict=True)]
        out: list[Hits | None] = [None] * len(ks)
        for fetch in sorted(set(fetches)):
            members = [i for i, f in enumerate(fetches) if f == fetch]
            group = queries if len(members) == len(ks) else queries[members]
            scores, rows = search(self.index, group, fetch, self.params)
            found: np.ndarray = rows >= 0
            complete = np.asarray(found.all(axis=1))
            ids = self.bundle.candidate_ids.take(rows if complete.all() else np.maximum(rows, 0))
            for n, i in enumerate(members):
                k = ks[i]
                if not excludes[i] and complete[n]:
                    out[i] = Hits(ids[n, :k], scores[n, :k])
                    continue
                keep = found[n] & ~np.isin(ids[n], np.fromiter(excludes[i], np.int64, len(excludes[i])))
                out[i] = Hits(ids[n][keep][:k], scores[n][keep][:k])
        return [h for h in out if h is not None]

    def warm_up(self, requests: int = 16) -> None:
        """Run tower and index once on made-up requests, for a snapshot without golden queries to do it."""
        spec = self.manifest.feature_spec
        rng = np.random.default_rng(0)
        made_up = [validate_features(spec, random_features(spec, rng)) for _ in range(requests)]
        self.search(self.embed(made_up), [10] * requests, [frozenset()] * requests)

    def run_quality_gate(self, threshold: float, pace: Callable[[], None] = no_pacing) -> dict[str, float]:
        """Golden queries through tower and index must reach `threshold` recall@K of their exact answers."""
        golden = self.bundle.golden
        if golden is None:
            return {}
        k = golden.exact_rows.shape[1]
        recall = recall_at_k(self._golden_rows(golden.inputs, k, pace), golden.exact_rows)
        self.gate = {"golden_recall": round(recall, 4), "golden_queries": float(len(golden.exact_rows))}
        if recall < threshold:
            raise QualityGateError(
                f"{self.version}: golden recall@{k} {recall:.3f} is below the gate's {threshold:.3f}"
            )
        return self.gate

    def golden_overlap(self, other: Snapshot, pace: Callable[[], None] = no_pacing) -> float | None:
        """Share of this snapshot's golden answers that `other` gives too, for the same golden requests."""
        golden = self.bundle.golden
        if golden is None or other.manifest.feature_spec != self.manifest.feature_spec:
            return None
        k = golden.exact_rows.shape[1]
        # A sample is enough for a report, and `other` is serving: keep its extra work small.
        inputs = {name: value[:OVERLAP_QUERIES] for name, value in golden.inputs.items()}
        ours, theirs = (s.bundle.candidate_ids[np.maximum(s._golden_rows(inputs, k, pace), 0)] for s in (self, other))
        return recall_at_k(theirs, ours)

    def _golden_rows(self, inputs: dict[str, np.ndarray], k: int, pace: Callable[[], None]) -> np.ndarray:
        """Tower and index over the golden requests, a few at a time with `pace` between, so that a snapshot
        checked beside the serving one takes the CPU in short turns."""
        rows = []
        for start in range(0, len(next(iter(inputs.values()))), GOLDEN_CHUNK):
            chunk = {name: value[start : start + GOLDEN_CHUNK] for name, value in inputs.items()}
            queries = self.bundle.session.run([self.manifest.feature_spec.output], chunk)[0]
            rows.append(np.asarray(search(self.index, queries, k, self.params)[1]))
            pace()
        return np.concatenate(rows)


OVERLAP_QUERIES = 64
GOLDEN_CHUNK = 32


def _bucket(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def load_snapshot(
    path: Path, placement: Placement, threads: int, mmap_index: bool = False, pace: Callable[[], None] = no_pacing
) -> Snapshot:
    bundle = open_bundle(path, placement.onnx_providers, threads, mmap_index=mmap_index, pace=pace)
    params = search_parameters(bundle.index, bundle.manifest.search_defaults)
    index, params = placement.place_index(bundle.index, params)
    return Snapshot(bundle, placement, index, params)
