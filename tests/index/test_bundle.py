from __future__ import annotations

import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.build import build_index
from index.bundle import SnapshotError, open_bundle, read_manifest, verify_files, write_bundle
from index.export_dir import Export
from index.linear_tower import write_linear_tower
from index.manifest import FORMAT_VERSION, GOLDEN_NAME, IDS_NAME, INDEX_NAME, MANIFEST_NAME, TOWER_NAME, FeatureSpec
from index.search import recall_at_k, search, search_parameters
from tests.index.conftest import CANDIDATES, DIM
from tests.index.tampering import manifest_document, resign, write_manifest


def refused(bundle: Path, reason: str, opening: bool = False) -> None:
    with pytest.raises(SnapshotError, match=reason):
        (open_bundle if opening else verify_files)(bundle)


def test_a_built_bundle_verifies_and_opens(built_bundle: Path, export: Export) -> None:
    manifest = verify_files(built_bundle)
    assert manifest.format_version == FORMAT_VERSION and manifest.version == built_bundle.name
    assert set(manifest.files) == {TOWER_NAME, INDEX_NAME, IDS_NAME, GOLDEN_NAME}
    assert manifest.dim == DIM and manifest.num_candidates == CANDIDATES and manifest.metric == "inner_product"
    assert manifest.feature_spec == export.feature_spec and manifest.provenance["objective"] == "ssmtl"
    assert manifest.build_report.query_source == "held-out users through the exported tower"
    opened = open_bundle(built_bundle)
    assert opened.index.ntotal == CANDIDATES and opened.index.d == DIM
    assert np.array_equal(opened.candidate_ids, export.candidate_ids)
    assert not any(p.name.startswith(".staging-") for p in built_bundle.parent.iterdir())


def test_the_golden_set_passes_the_gate_through_tower_and_index(built_bundle: Path) -> None:
    opened = open_bundle(built_bundle)
    golden = opened.golden
    assert golden is not None and golden.exact_rows.shape == (256, 100)
    queries = opened.session.run([opened.manifest.feature_spec.output], golden.inputs)[0]
    found = search(opened.index, queries, 100, search_parameters(opened.index, opened.manifest.search_defaults))[1]
    assert recall_at_k(found, golden.exact_rows) >= 0.9


def test_no_manifest_is_no_snapshot(bundle: Path) -> None:
    (bundle / MANIFEST_NAME).unlink()
    refused(bundle, "no manifest.json, so it is not a snapshot")


def test_unknown_format_version(bundle: Path) -> None:
    document = manifest_document(bundle)
    document["format_version"] = FORMAT_VERSION + 1
    write_manifest(bundle, document)
    refused(bundle, f"unknown manifest format version {FORMAT_VERSION + 1}")


def test_manifest_that_is_not_json(bundle: Path) -> None:
    (bundle / MANIFEST_NAME).write_text("{not json")
    refused(bundle, "not readable JSON")


def test_missing_file(bundle: Path) -> None:
    (bundle / INDEX_NAME).unlink()
    refused(bundle, f"{INDEX_NAME} is missing")


def test_extra_file(bundle: Path) -> None:
    (bundle / "notes.txt").write_text("not part of the snapshot")
    refused(bundle, "files not in the manifest: notes.txt")


def test_size_mismatch(bundle: Path) -> None:
    size = (bundle / IDS_NAME).stat().st_size
    with (bundle / IDS_NAME).open("ab") as f:
        f.write(b"\0")
    refused(bundle, f"{IDS_NAME} is {size + 1} bytes, manifest says {size}")


def test_checksum_mismatch_is_caught_before_faiss_parses_the_index(bundle: Path) -> None:
    path = bundle / INDEX_NAME
    data = bytearray(path.read_bytes())
    data[: len(data) // 2] = b"\xff" * (len(data) // 2)  # same size, garbage FAISS could not read
    path.write_bytes(bytes(data))
    refused(bundle, f"{INDEX_NAME} fails its sha256 check", opening=True)


def test_required_file_not_listed(bundle: Path) -> None:
    (bundle / TOWER_NAME).unlink()
    resign(bundle)
    refused(bundle, f"manifest lists no {TOWER_NAME}")


@pytest.mark.parametrize("name", ["../outside.bin", "nested/file.bin", "/etc/passwd", "..", "a\\..\\b"])
def test_file_names_that_escape_the_bundle(bundle: Path, name: str) -> None:
    document = manifest_document(bundle)
    document["files"][name] = document["files"][IDS_NAME]
    write_manifest(bundle, document)
    refused(bundle, "escapes the bundle directory")


def test_a_manifest_that_lists_itself(bundle: Path) -> None:
    document = manifest_document(bundle)
    document["files"][MANIFEST_NAME] = document["files"][IDS_NAME]
    write_manifest(bundle, document)
    refused(bundle, "the manifest lists itself")


def test_a_symlinked_file(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.npy"
    shutil.move(bundle / IDS_NAME, outside)
    os.symlink(outside, bundle / IDS_NAME)
    refused(bundle, f"{IDS_NAME} is a symbolic link")


def test_duplicate_candidate_ids(bundle: Path) -> None:
    ids = np.load(bundle / IDS_NAME)
    ids[1] = ids[0]
    np.save(bundle / IDS_NAME, ids)
    resign(bundle)
    refused(bundle, "duplicate candidate ids", opening=True)


def test_ids_that_are_not_int64(bundle: Path) -> None:
    np.save(bundle / IDS_NAME, np.load(bundle / IDS_NAME).astype(np.float64))
    resign(bundle)
    refused(bundle, "must be a 1-d int64 array", opening=True)


def test_candidate_count_differs_from_the_manifest(bundle: Path) -> None:
    resign(bundle, num_candidates=CANDIDATES + 1)
    refused(bundle, f"{CANDIDATES} candidate ids, manifest says {CANDIDATES + 1}", opening=True)


def test_candidate_count_differs_from_the_index_size(bundle: Path) -> None:
    np.save(bundle / IDS_NAME, np.load(bundle / IDS_NAME)[:-10])
    resign(bundle, num_candidates=CANDIDATES - 10)
    refused(bundle, f"index holds {CANDIDATES} vectors but there are {CANDIDATES - 10} ids", opening=True)


def test_index_dim_differs_from_the_manifest(bundle: Path) -> None:
    resign(bundle, dim=DIM * 2)
    refused(bundle, f"index dim {DIM} != manifest dim {DIM * 2}", opening=True)


def test_tower_output_dim_differs_from_the_index(bundle: Path, feature_spec: FeatureSpec) -> None:
    write_linear_tower(bundle / TOWER_NAME, feature_spec, DIM // 2, np.random.default_rng(1))
    resign(bundle)
    refused(bundle, f"tower output dim {DIM // 2} != index dim {DIM}", opening=True)


def test_tower_inputs_differ_from_the_feature_spec(bundle: Path, feature_spec: FeatureSpec) -> None:
    other = FeatureSpec(fields=feature_spec.fields[:-1])
    write_linear_tower(bundle / TOWER_NAME, other, DIM, np.random.default_rng(1))
    resign(bundle)
    refused(bundle, "tower inputs .* do not match the feature spec", opening=True)


def test_an_index_faiss_cannot_read(bundle: Path) -> None:
    (bundle / INDEX_NAME).write_bytes(b"not an index")
    resign(bundle)
    refused(bundle, f"{INDEX_NAME} cannot be read by FAISS", opening=True)


def test_a_tower_onnx_runtime_cannot_load(bundle: Path) -> None:
    (bundle / TOWER_NAME).write_bytes(b"not a model")
    resign(bundle)
    refused(bundle, f"{TOWER_NAME} cannot be loaded by ONNX Runtime", opening=True)


def test_writer_refuses_an_existing_version_and_leaves_nothing_behind_on_failure(
    built_bundle: Path, export: Export, tmp_path: Path
) -> None:
    candidates = export.embeddings
    built = build_index(candidates, candidates[:50], "test", k=10, factory="Flat", device="cpu")
    args = (built, export.candidate_ids, export.feature_spec, {})
    store = tmp_path / "store"
    store.mkdir()
    first = write_bundle(store, "v1", export.tower, *args)
    assert read_manifest(first).index_factory == "Flat"
    assert faiss.read_index(str(first / INDEX_NAME)).ntotal == CANDIDATES
    with pytest.raises(SnapshotError, match="version v1 already exists"):
        write_bundle(store, "v1", export.tower, *args)
    with pytest.raises(FileNotFoundError):
        write_bundle(store, "v2", tmp_path / "no-such-tower.onnx", *args)
    assert sorted(p.name for p in store.iterdir()) == ["v1"]
    with pytest.raises(ValueError, match="invalid snapshot version"):
        write_bundle(store, "../v3", export.tower, *args)
