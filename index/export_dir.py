"""The export directory: what `export/` hands to `index/` (tower, candidate embeddings, spec, queries)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from index.manifest import IDS_NAME, TOWER_NAME, FeatureSpec

TOWER = TOWER_NAME
EMBEDDINGS = "candidate_embeddings.npy"
IDS = IDS_NAME
SPEC = "feature_spec.json"
PROVENANCE = "provenance.json"
QUERIES = "queries.npz"


class ExportError(Exception):
    pass


@dataclass(frozen=True)
class Export:
    root: Path
    feature_spec: FeatureSpec
    embeddings: np.ndarray
    candidate_ids: np.ndarray
    provenance: dict[str, object]
    query_inputs: dict[str, np.ndarray] | None

    @property
    def tower(self) -> Path:
        return self.root / TOWER


def read_export(root: Path) -> Export:
    for name in (TOWER, EMBEDDINGS, IDS, SPEC):
        if not (root / name).is_file():
            raise ExportError(f"{root}: the export has no {name}")
    spec = FeatureSpec.model_validate_json((root / SPEC).read_bytes())
    embeddings = np.load(root / EMBEDDINGS, allow_pickle=False)
    ids = np.load(root / IDS, allow_pickle=False)
    if embeddings.ndim != 2 or len(embeddings) != len(ids):
        raise ExportError(f"{root}: {len(ids)} ids for embeddings of shape {embeddings.shape}")
    provenance = json.loads((root / PROVENANCE).read_text()) if (root / PROVENANCE).is_file() else {}
    queries = None
    if (root / QUERIES).is_file():
        with np.load(root / QUERIES, allow_pickle=False) as data:
            queries = {k: data[k] for k in data.files}
    return Export(root, spec, embeddings.astype(np.float32), ids.astype(np.int64), provenance, queries)


def embed(session: ort.InferenceSession, spec: FeatureSpec, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run the tower over many requests' inputs in chunks."""
    count = len(next(iter(inputs.values())))
    out = []
    for start in range(0, count, 4096):
        feed = {name: value[start : start + 4096] for name, value in inputs.items()}
        out.append(session.run([spec.output], feed)[0])
    return np.concatenate(out).astype(np.float32)
