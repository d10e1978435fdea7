"""The snapshot manifest: what a bundle holds, the user tower's feature spec, and how it was built."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOWER_NAME = "user_tower.onnx"
INDEX_NAME = "index.faiss"
IDS_NAME = "candidate_ids.npy"
GOLDEN_NAME = "golden.npz"
EMBEDDING_OUTPUT = "embedding"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureField(Frozen):
    """One input of the user tower.

    `categorical` is one int64 id in [0, vocab_size); `numeric` is one finite float; `sequence` is a list of
    int64 ids in [0, vocab_size), at most max_length of them, padded with -1 to the batch's longest.
    An optional feature may be left out of a request: a categorical then takes the unknown bucket
    (vocab_size, which the tower reserves), a numeric takes `default`, a sequence is empty.
    """

    name: str
    kind: Literal["categorical", "numeric", "sequence"]
    dtype: Literal["int64", "float32"]
    vocab_size: int | None = None
    max_length: int | None = None
    optional: bool = False
    default: float = 0.0


class FeatureSpec(Frozen):
    fields: tuple[FeatureField, ...]
    output: str = EMBEDDING_OUTPUT

    def field(self, name: str) -> FeatureField | None:
        return next((f for f in self.fields if f.name == name), None)


class SearchDefaults(Frozen):
    nprobe: int = Field(ge=1)
    refine_factor: float = Field(ge=1.0)


class BuildReport(Frozen):
    """How the index was built and how well its search defaults do on held-out queries.

    The fields after `train_size` came later; they default so that older manifests still read.
    """

    k: int
    recall_at_k: float
    queries: int
    query_source: str
    build_seconds: float
    train_size: int
    target_recall: float | None = None
    tune_queries: int | None = None
    train_seconds: float | None = None
    add_seconds: float | None = None
    cpu_seconds: float | None = None
    device: str = "cpu"


class FileEntry(Frozen):
    size: int
    sha256: str


class Manifest(Frozen):
    format_version: int
    version: str
    created_at: str
    dim: int
    metric: Literal["inner_product", "l2"]
    num_candidates: int
    index_factory: str
    search_defaults: SearchDefaults
    feature_spec: FeatureSpec
    provenance: dict[str, object]
    build_report: BuildReport
    files: dict[str, FileEntry]
