from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from index.bundle import open_bundle
from index.export_dir import Export, embed
from index.golden import make_golden, synthetic_inputs
from index.manifest import FeatureField, FeatureSpec
from index.search import exact_top_k
from index.snapshot import build_snapshot
from index.store import LocalStore
from tests.index.conftest import write_export


def test_synthetic_inputs_are_valid_for_every_kind_of_feature() -> None:
    spec = FeatureSpec(
        fields=(
            FeatureField(name="age", kind="numeric", dtype="float32"),
            FeatureField(name="country", kind="categorical", dtype="int64", vocab_size=7),
            FeatureField(name="history", kind="sequence", dtype="int64", vocab_size=50, max_length=5),
        )
    )
    inputs = synthetic_inputs(spec, 64, np.random.default_rng(0))
    assert inputs["age"].shape == (64,) and inputs["age"].dtype == np.float32
    assert inputs["country"].dtype == np.int64 and inputs["country"].min() >= 0 and inputs["country"].max() < 7
    history = inputs["history"]
    assert history.dtype == np.int64 and history.shape[0] == 64 and 1 <= history.shape[1] <= 5
    assert ((history == -1) | ((history >= 0) & (history < 50))).all()
    for row in history:  # padding only after the ids
        padded = np.flatnonzero(row == -1)
        assert (padded == np.arange(len(row) - len(padded), len(row))).all()


def test_golden_rows_are_the_exact_top_k_of_the_towers_embeddings(built_bundle: Path, export: Export) -> None:
    opened = open_bundle(built_bundle)
    golden = opened.golden
    assert golden is not None
    queries = embed(opened.session, opened.manifest.feature_spec, golden.inputs)
    assert np.array_equal(exact_top_k(export.embeddings, queries, 100), golden.exact_rows)


def test_an_export_without_users_still_gets_a_golden_set(tmp_path: Path, feature_spec: FeatureSpec) -> None:
    export = write_export(tmp_path / "export", feature_spec, with_queries=False, seed=5)
    bundle = build_snapshot(export, LocalStore(tmp_path / "store"), version="v1", golden_size=32, device="cpu")
    opened = open_bundle(bundle)
    assert opened.manifest.build_report.query_source == "candidate embeddings with noise"
    assert opened.golden is not None and opened.golden.exact_rows.shape == (32, 100)
    session = ort.InferenceSession(str(export.tower), providers=["CPUExecutionProvider"])
    expected = make_golden(session, feature_spec, opened.golden.inputs, export.embeddings, 100)
    assert np.array_equal(expected.exact_rows, opened.golden.exact_rows)
