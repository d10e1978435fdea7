"""The snapshot bundle: writing it (staging, fsync, manifest last, rename), verifying it and opening it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import faiss
import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from index.build import BuiltIndex
from index.manifest import (
    FORMAT_VERSION,
    GOLDEN_NAME,
    IDS_NAME,
    INDEX_NAME,
    MANIFEST_NAME,
    TOWER_NAME,
    FeatureSpec,
    FileEntry,
    Manifest,
)
from index.versions import check_version

REQUIRED_FILES = (TOWER_NAME, INDEX_NAME, IDS_NAME)


class SnapshotError(Exception):
    """A directory that is not a valid snapshot; the message says why."""


@dataclass(frozen=True)
class Golden:
    """Queries as tower inputs, with the exact top-k candidate rows of the tower's embeddings."""

    inputs: dict[str, np.ndarray]
    exact_rows: np.ndarray


def no_pacing() -> None:
    return None


def sha256_of(path: Path, pace: Callable[[], None] = no_pacing) -> str:
    """`pace` runs after every MiB, so a caller can spread the hashing of a big file over time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            pace()
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename_into_place(staging: Path, final: Path) -> None:
    """Make a fully written staging directory the bundle: its entries durable first, then the name."""
    fsync_path(staging)
    staging.rename(final)
    fsync_path(final.parent)


def write_bundle(
    store_root: Path,
    version: str,
    tower: Path,
    built: BuiltIndex,
    candidate_ids: np.ndarray,
    feature_spec: FeatureSpec,
    provenance: dict[str, object],
    golden: Golden | None = None,
) -> Path:
    """Write `<store>/.staging-<version>/`, fsync it, then rename it to `<store>/<version>/`."""
    check_version(version)
    final = store_root / version
    if final.exists():
        raise SnapshotError(f"version {version} already exists in {store_root}")
    staging = store_root / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(tower, staging / TOWER_NAME)
        faiss.write_index(built.index, str(staging / INDEX_NAME))
        np.save(staging / IDS_NAME, np.asarray(candidate_ids, dtype=np.int64))
        if golden is not None:
            arrays = {f"input.{k}": v for k, v in golden.inputs.items()}
            np.savez(staging / GOLDEN_NAME, exact_rows=golden.exact_rows, **arrays)  # type: ignore[arg-type]
        files = {}
        for path in sorted(staging.iterdir()):
            fsync_path(path)
            files[path.name] = FileEntry(size=path.stat().st_size, sha256=sha256_of(path))
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            version=version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            dim=built.index.d,
            metric="inner_product",
            num_candidates=int(built.index.ntotal),
            index_factory=built.factory,
            search_defaults=built.search_defaults,
            feature_spec=feature_spec,
            provenance=provenance,
            build_report=built.report,
            files=files,
        )
        manifest_path = staging / MANIFEST_NAME
        manifest_path.write_text(manifest.model_dump_json(indent=2))
        fsync_path(manifest_path)
        rename_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def read_manifest(bundle: Path) -> Manifest:
    try:
        raw = (bundle / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"{bundle}: no {MANIFEST_NAME}, so it is not a snapshot") from None
    except OSError as e:
        raise SnapshotError(f"{bundle}: {MANIFEST_NAME} is not readable: {e}") from None
    return parse_manifest(raw, bundle)


def parse_manifest(raw: bytes, bundle: Path | str) -> Manifest:
    """The manifest in `raw`, read from `bundle` (named in refusals); the format version is checked first."""
    try:
        document = json.loads(raw)
    except ValueError as e:
        raise SnapshotError(f"{bundle}: {MANIFEST_NAME} is not readable JSON: {e}") from None
    if not isinstance(document, dict) or document.get("format_version") != FORMAT_VERSION:
        found = document.get("format_version") if isinstance(document, dict) else None
        raise SnapshotError(f"{bundle}: unknown manifest format version {found!r} (expected {FORMAT_VERSION})")
    try:
        return Manifest.model_validate(document)
    except ValidationError as e:
        raise SnapshotError(f"{bundle}: invalid manifest: {e}") from None


def check_file_names(bundle: Path | str, manifest: Manifest) -> None:
    """Refuse names that would read or write outside the bundle, or shadow the manifest; before any I/O on them."""
    for name in manifest.files:
        if name in ("", ".", "..") or PurePosixPath(name).name != name or "\\" in name:
            raise SnapshotError(f"{bundle}: file name {name!r} escapes the bundle directory")
        if name == MANIFEST_NAME:
            raise SnapshotError(f"{bundle}: the manifest lists itself")
    missing = [n for n in REQUIRED_FILES if n not in manifest.files]
    if missing:
        raise SnapshotError(f"{bundle}: manifest lists no {', '.join(missing)}")


def verify_files(bundle: Path, pace: Callable[[], None] = no_pacing) -> Manifest:
    """Check the manifest and every file's presence, size and sha256, without parsing any of them."""
    manifest = read_manifest(bundle)
    check_file_names(bundle, manifest)
    present = {p.name for p in bundle.iterdir()} - {MANIFEST_NAME}
    extra = present - set(manifest.files)
    if extra:
        raise SnapshotError(f"{bundle}: files not in the manifest: {', '.join(sorted(extra))}")
    for name, entry in manifest.files.items():
        path = bundle / name
        if path.is_symlink():
            raise SnapshotError(f"{bundle}: {name} is a symbolic link, not a file of the bundle")
        if not path.is_file():
            raise SnapshotError(f"{bundle}: {name} is missing")
        size = path.stat().st_size
        if size != entry.size:
            raise SnapshotError(f"{bundle}: {name} is {size} bytes, manifest says {entry.size}")
        if sha256_of(path, pace) != entry.sha256:
            raise SnapshotError(f"{bundle}: {name} fails its sha256 check")
    return manifest


def manifest_sha256(bundle: Path) -> str:
    return sha256_of(bundle / MANIFEST_NAME)


@dataclass
class OpenBundle:
    path: Path
    manifest: Manifest
    session: ort.InferenceSession
    index: faiss.Index
    candidate_ids: np.ndarray
    golden: Golden | None


def open_bundle(
    bundle: Path,
    providers: list[str] | None = None,
    threads: int = 1,
    mmap_index: bool = False,
    pace: Callable[[], None] = no_pacing,
) -> OpenBundle:
    """Verify the files, then parse them and check that tower, index and ids agree with the manifest."""
    manifest = verify_files(bundle, pace)
    try:
        ids = np.load(bundle / IDS_NAME, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise SnapshotError(f"{bundle}: {IDS_NAME} is not a numpy array: {e}") from None
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise SnapshotError(f"{bundle}: {IDS_NAME} must be a 1-d int64 array, got {ids.dtype} {ids.shape}")
    if _has_duplicates(ids):
        raise SnapshotError(f"{bundle}: {IDS_NAME} holds duplicate candidate ids")
    if len(ids) != manifest.num_candidates:
        raise SnapshotError(f"{bundle}: {len(ids)} candidate ids, manifest says {manifest.num_candidates}")

    # IO_FLAG_MMAP_IFC maps the stored codes (the refinement's SQ8 vectors) instead of copying them, so the
    # workers of one host share those pages; the fast-scan lists are still copied, FAISS can't map them.
    flags = faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP_IFC if mmap_index else 0)
    try:
        index = faiss.read_index(str(bundle / INDEX_NAME), flags)
    except RuntimeError as e:
        raise SnapshotError(f"{bundle}: {INDEX_NAME} cannot be read by FAISS: {e}") from None
    if index.d != manifest.dim:
        raise SnapshotError(f"{bundle}: index dim {index.d} != manifest dim {manifest.dim}")
    if index.ntotal != len(ids):
        raise SnapshotError(f"{bundle}: index holds {index.ntotal} vectors but there are {len(ids)} ids")

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(bundle / TOWER_NAME), options, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as e:
        raise SnapshotError(f"{bundle}: {TOWER_NAME} cannot be loaded by ONNX Runtime: {e}") from None
    _check_tower(bundle, session, manifest)
    golden = _read_golden(bundle, manifest) if GOLDEN_NAME in manifest.files else None
    return OpenBundle(bundle, manifest, session, index, ids, golden)


def _check_tower(bundle: Path, session: ort.InferenceSession, manifest: Manifest) -> None:
    spec = manifest.feature_spec
    inputs = {i.name for i in session.get_inputs()}
    expected = {f.name for f in spec.fields}
    if inputs != expected:
        raise SnapshotError(f"{bundle}: tower inputs {sorted(inputs)} do not match the feature spec {sorted(expected)}")
    outputs = {o.name: o for o in session.get_outputs()}
    if spec.output not in outputs:
        raise SnapshotError(f"{bundle}: tower has no output named {spec.output!r}")
    dim = outputs[spec.output].shape[-1]
    if not isinstance(dim, int):
        raise SnapshotError(f"{bundle}: tower output dim is not fixed ({dim!r}), so it cannot match the index")
    if dim != manifest.dim:
        raise SnapshotError(f"{bundle}: tower output dim {dim} != index dim {manifest.dim}")


def _read_golden(bundle: Path, manifest: Manifest) -> Golden:
    try:
        with np.load(bundle / GOLDEN_NAME, allow_pickle=False) as data:
            inputs = {k.removeprefix("input."): data[k] for k in data.files if k.startswith("input.")}
            exact = data["exact_rows"]
    except (ValueError, OSError, KeyError) as e:
        raise SnapshotError(f"{bundle}: {GOLDEN_NAME} is unreadable: {e}") from None
    if set(inputs) != {f.name for f in manifest.feature_spec.fields}:
        raise SnapshotError(f"{bundle}: {GOLDEN_NAME} inputs do not match the feature spec")
    return Golden(inputs, exact)


def _has_duplicates(ids: np.ndarray) -> bool:
    """Sort and compare neighbours: 15x faster than np.unique on a million ids, and it lets go of the GIL,
    so a replica loading a bundle beside the serving one does not stall its requests."""
    ordered = np.sort(ids)
    return bool((ordered[1:] == ordered[:-1]).any())
