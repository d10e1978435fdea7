"""The object store against fsspec's local filesystem and a real S3 server (moto's) on loopback."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from index.bundle import SnapshotError, verify_files
from index.manifest import IDS_NAME, INDEX_NAME, MANIFEST_NAME
from index.publish import PublishError, publish
from index.remote import ObjectStore, fetch_uri
from index.store import LocalStore
from tests.index.tampering import copy_version, manifest_document, resign

pytest.importorskip("fsspec")
VERSIONS = ("20250104T000000Z", "20250104T000001Z", "20250104T000002Z")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["file", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return ObjectStore(f"file://{tmp_path}/remote")
    endpoint = request.getfixturevalue("s3_endpoint")
    options: dict[str, Any] = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint}}
    bucket = f"ebr-test-{uuid.uuid4().hex[:12]}"
    store = ObjectStore(f"s3://{bucket}/snapshots", options)
    store.fs.mkdir(bucket)
    return store


@pytest.fixture
def local(built_bundle: Path, tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "local")
    for version in VERSIONS:
        copy_version(built_bundle, store, version)
    return store


def test_push_then_fetch_gives_a_verified_copy(remote: ObjectStore, local: LocalStore, tmp_path: Path) -> None:
    assert remote.versions() == []
    assert remote.push(local.path(VERSIONS[0])) == f"{remote.url}/{VERSIONS[0]}"
    remote.push(local.path(VERSIONS[1]))
    assert remote.versions() == list(VERSIONS[:2])
    fetched = remote.fetch(VERSIONS[1], tmp_path / "cache")
    assert fetched == tmp_path / "cache" / VERSIONS[1]
    assert verify_files(fetched) == verify_files(local.path(VERSIONS[1]))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [VERSIONS[1]]
    assert remote.fetch(VERSIONS[1], tmp_path / "cache") == fetched  # already there and verified


def test_pushing_the_same_bundle_again_is_a_no_op_and_a_different_one_is_refused(
    remote: ObjectStore, local: LocalStore
) -> None:
    remote.push(local.path(VERSIONS[0]))
    remote.push(local.path(VERSIONS[0]))
    resign(local.path(VERSIONS[0]), provenance={"dataset": "another"})
    with pytest.raises(SnapshotError, match="already holds a different snapshot"):
        remote.push(local.path(VERSIONS[0]))


def test_an_unverifiable_bundle_is_never_uploaded(remote: ObjectStore, local: LocalStore) -> None:
    (local.path(VERSIONS[0]) / INDEX_NAME).write_bytes(b"truncated")
    with pytest.raises(SnapshotError, match="is 9 bytes"):
        remote.push(local.path(VERSIONS[0]))
    assert remote.versions() == []


def test_files_without_a_manifest_are_not_a_snapshot(remote: ObjectStore, local: LocalStore, tmp_path: Path) -> None:
    """An upload cut short before its manifest: the files are there, the version is not."""
    remote.fs.makedirs(f"{remote.root}/{VERSIONS[2]}", exist_ok=True)
    remote.fs.put_file(str(local.path(VERSIONS[2]) / IDS_NAME), f"{remote.root}/{VERSIONS[2]}/{IDS_NAME}")
    assert remote.versions() == []
    with pytest.raises(SnapshotError, match=r"no manifest\.json, so it is not a snapshot"):
        remote.fetch(VERSIONS[2], tmp_path / "cache")


def test_a_corrupted_object_is_refused_and_leaves_nothing_in_the_cache(
    remote: ObjectStore, local: LocalStore, tmp_path: Path
) -> None:
    remote.push(local.path(VERSIONS[0]))
    data = bytearray((local.path(VERSIONS[0]) / IDS_NAME).read_bytes())
    data[-1] ^= 0xFF
    remote.fs.pipe_file(f"{remote.root}/{VERSIONS[0]}/{IDS_NAME}", bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(SnapshotError, match=f"{IDS_NAME} fails its sha256 check"):
        remote.fetch(VERSIONS[0], cache)
    assert list(cache.iterdir()) == []


def test_a_remote_manifest_naming_a_path_outside_the_cache_is_refused_before_writing(
    remote: ObjectStore, local: LocalStore, tmp_path: Path
) -> None:
    remote.push(local.path(VERSIONS[0]))
    document = manifest_document(local.path(VERSIONS[0]))
    document["files"]["../../escaped.npy"] = document["files"][IDS_NAME]
    remote.fs.pipe_file(f"{remote.root}/{VERSIONS[0]}/{MANIFEST_NAME}", json.dumps(document).encode())
    with pytest.raises(SnapshotError, match="escapes the bundle directory"):
        remote.fetch(VERSIONS[0], tmp_path / "deep" / "cache")
    assert not (tmp_path / "escaped.npy").exists() and not (tmp_path / "deep" / "escaped.npy").exists()


def test_a_damaged_cached_copy_is_fetched_again(remote: ObjectStore, local: LocalStore, tmp_path: Path) -> None:
    remote.push(local.path(VERSIONS[0]))
    fetched = remote.fetch(VERSIONS[0], tmp_path / "cache")
    (fetched / INDEX_NAME).write_bytes(b"damaged")
    assert verify_files(remote.fetch(VERSIONS[0], tmp_path / "cache")).version == VERSIONS[0]


def test_retention_and_staging_cleanup(remote: ObjectStore, local: LocalStore) -> None:
    for version in VERSIONS:
        remote.push(local.path(version))
    assert remote.retain(keep=1, protected={VERSIONS[0]}) == [VERSIONS[1]]
    assert remote.versions() == [VERSIONS[0], VERSIONS[2]]
    remote.fs.makedirs(f"{remote.root}/20250104T000009Z", exist_ok=True)
    remote.fs.pipe_file(f"{remote.root}/20250104T000009Z/{IDS_NAME}", b"partial upload")
    assert remote.clean_staging(older_than_seconds=3600) == []  # may still be uploading
    assert remote.clean_staging(older_than_seconds=-1) == ["20250104T000009Z"]
    assert remote.versions() == [VERSIONS[0], VERSIONS[2]]
    assert not remote.fs.exists(f"{remote.root}/20250104T000009Z/{IDS_NAME}")


def test_publish_to_a_remote_names_it_in_the_pointer(remote: ObjectStore, local: LocalStore, tmp_path: Path) -> None:
    pointer = publish(local, VERSIONS[1], remote=remote)
    assert pointer.uri == f"{remote.url}/{VERSIONS[1]}" and remote.versions() == [VERSIONS[1]]
    options = {"storage_options": remote.fs.storage_options} if remote.url.startswith("s3://") else {}
    fetched = fetch_uri(pointer.uri, tmp_path / "cache", **options)
    assert verify_files(fetched).version == VERSIONS[1]
    assert fetch_uri(local.uri(VERSIONS[0]), tmp_path / "unused") == local.path(VERSIONS[0]).resolve()


def test_publish_refuses_what_the_remote_already_holds_differently(remote: ObjectStore, local: LocalStore) -> None:
    remote.push(local.path(VERSIONS[1]))
    resign(local.path(VERSIONS[1]), provenance={"dataset": "rebuilt"})
    with pytest.raises(PublishError, match=f"refusing to publish {VERSIONS[1]}: .*already holds a different snapshot"):
        publish(local, VERSIONS[1], remote=remote)
    assert local.read_pointer() is None
