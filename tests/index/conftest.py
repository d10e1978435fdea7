"""Small real data for the index tests: an export with a linear ONNX tower, a built bundle, a Redis prefix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import redis

from index.bench_data import clustered_embeddings
from index.export_dir import EMBEDDINGS, IDS, PROVENANCE, QUERIES, SPEC, TOWER, Export, read_export
from index.golden import synthetic_inputs
from index.linear_tower import write_linear_tower
from index.manifest import FeatureField, FeatureSpec
from index.snapshot import build_snapshot
from index.store import LocalStore

DIM = 16
CANDIDATES = 3000
USERS = 400

SPEC_FIELDS = (
    *(FeatureField(name=f"n{i}", kind="numeric", dtype="float32") for i in range(6)),
    FeatureField(name="country", kind="categorical", dtype="int64", vocab_size=20, optional=True),
)


@pytest.fixture(scope="session")
def feature_spec() -> FeatureSpec:
    return FeatureSpec(fields=SPEC_FIELDS)


def write_export(root: Path, spec: FeatureSpec, with_queries: bool = True, seed: int = 0) -> Export:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    write_linear_tower(root / TOWER, spec, DIM, rng)
    np.save(root / EMBEDDINGS, clustered_embeddings(CANDIDATES, DIM, components=40, seed=seed))
    np.save(root / IDS, rng.choice(10**9, size=CANDIDATES, replace=False).astype(np.int64))
    (root / SPEC).write_text(spec.model_dump_json())
    (root / PROVENANCE).write_text(json.dumps({"dataset": "test", "objective": "ssmtl"}))
    if with_queries:
        np.savez(root / QUERIES, **synthetic_inputs(spec, USERS, rng))  # type: ignore[arg-type]
    return read_export(root)


@pytest.fixture(scope="session")
def export(tmp_path_factory: pytest.TempPathFactory, feature_spec: FeatureSpec) -> Export:
    return write_export(tmp_path_factory.mktemp("export"), feature_spec)


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory: pytest.TempPathFactory, export: Export) -> Path:
    """One bundle built for the session; tests that change a bundle take a copy (`bundle`)."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    return build_snapshot(export, store, version="20250101T000000Z", device="cpu")


@pytest.fixture
def bundle(built_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store" / built_bundle.name
    shutil.copytree(built_bundle, copy)
    return copy


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    """The suite's Redis (tests/conftest.py), under the name these tests use."""
    return redis_client


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix
