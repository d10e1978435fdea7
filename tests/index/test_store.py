from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import redis

from index.publish import current_key, publish, replicas_key
from index.retention import collect_garbage, protected_versions
from index.store import HISTORY_NAME, LocalStore, Pointer
from tests.index.tampering import copy_version

VERSIONS = [f"20250102T00000{i}Z" for i in range(6)]


@pytest.fixture
def store(built_bundle: Path, tmp_path: Path) -> LocalStore:
    """Six committed versions, oldest first."""
    local = LocalStore(tmp_path / "store")
    for version in VERSIONS:
        copy_version(built_bundle, local, version)
    return local


def test_versions_are_committed_directories_in_version_order(store: LocalStore) -> None:
    (store.root / ".staging-20250103T000000Z").mkdir()
    (store.root / "20250103T000001Z").mkdir()  # no manifest: not a snapshot
    (store.root / "20250102T000000Z-10").mkdir()
    copy_version(store.path(VERSIONS[0]), store, "20250102T000009Z-9")
    copy_version(store.path(VERSIONS[0]), store, "20250102T000009Z-10")
    assert store.versions() == [*VERSIONS, "20250102T000009Z-9", "20250102T000009Z-10"]


def test_retention_keeps_the_newest_and_every_protected_version(store: LocalStore) -> None:
    protected = {VERSIONS[0], VERSIONS[2]}
    removed = store.retain(keep=2, protected=protected)
    assert removed == [VERSIONS[1], VERSIONS[3]]
    assert store.versions() == [VERSIONS[0], VERSIONS[2], VERSIONS[4], VERSIONS[5]]
    assert not any(p.name.startswith(".deleting-") for p in store.root.iterdir())
    with pytest.raises(ValueError, match="at least one"):
        store.retain(keep=0, protected=set())


def test_stale_staging_is_cleaned_and_fresh_staging_is_left(store: LocalStore) -> None:
    stale, fresh, deleting = (store.root / name for name in (".staging-a", ".staging-b", ".deleting-c"))
    for directory in (stale, fresh, deleting):
        directory.mkdir()
        (directory / "index.faiss").write_bytes(b"partial")
    hour_ago = time.time() - 7200
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(deleting, (hour_ago, hour_ago))
    assert sorted(store.clean_staging(older_than_seconds=3600)) == [".deleting-c", ".staging-a"]
    assert fresh.is_dir() and not stale.exists() and not deleting.exists()


def test_history_records_each_publish_and_skips_a_torn_line(store: LocalStore) -> None:
    for version in VERSIONS[:3]:
        publish(store, version)
    with (store.root / HISTORY_NAME).open("a") as f:
        f.write('{"version": "2025')
    assert [p.version for p in store.history()] == VERSIONS[:3]


def test_protected_are_serving_previous_pinned_and_replicas(
    store: LocalStore, client: redis.Redis, prefix: str
) -> None:
    for version in VERSIONS[1:4]:
        publish(store, version, client, prefix)
    client.hset(replicas_key(prefix), "host:1", json.dumps({"version": VERSIONS[0], "state": "serving"}))
    client.hset(replicas_key(prefix), "host:2", "not json")
    protected = protected_versions(store, client, prefix, pinned=["pinned-elsewhere"])
    assert protected == {VERSIONS[3], VERSIONS[2], VERSIONS[0], "pinned-elsewhere"}

    collected = collect_garbage(store, keep=1, protected=protected)
    assert collected.removed == [VERSIONS[1], VERSIONS[4]]
    assert store.versions() == [VERSIONS[0], VERSIONS[2], VERSIONS[3], VERSIONS[5]]


def test_stopped_and_silent_replicas_protect_nothing(store: LocalStore, client: redis.Redis, prefix: str) -> None:
    publish(store, VERSIONS[3], client, prefix)
    now = time.time()
    reports = {
        "live": {"version": VERSIONS[0], "state": "serving", "updated_at": now - 5},
        "stopped": {"version": VERSIONS[1], "state": "stopped", "updated_at": now - 5},
        "silent": {"version": VERSIONS[2], "state": "serving", "updated_at": now - 3600},
    }
    for replica, report in reports.items():
        client.hset(replicas_key(prefix), replica, json.dumps(report))
    assert protected_versions(store, client, prefix) == {VERSIONS[3], VERSIONS[0]}
    assert protected_versions(store, client, prefix, replica_stale_after_s=7200) == {
        VERSIONS[3],
        VERSIONS[0],
        VERSIONS[2],
    }


def test_a_forced_rollback_protects_the_version_rolled_back_from(store: LocalStore) -> None:
    publish(store, VERSIONS[3])
    publish(store, VERSIONS[5])
    publish(store, VERSIONS[3], force=True)
    assert protected_versions(store, None, "unused") == {VERSIONS[3], VERSIONS[5]}


def test_the_redis_pointer_is_protected_even_when_the_local_one_differs(
    store: LocalStore, client: redis.Redis, prefix: str
) -> None:
    publish(store, VERSIONS[1])
    remote_pointer = Pointer(version=VERSIONS[4], uri="file:///elsewhere", manifest_sha256="0", published_at="now")
    client.set(current_key(prefix), remote_pointer.model_dump_json())
    assert {VERSIONS[1], VERSIONS[4]} <= protected_versions(store, client, prefix)
