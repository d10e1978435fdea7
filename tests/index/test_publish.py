from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import typer
from typer.testing import CliRunner

from index.bundle import manifest_sha256
from index.commands import register
from index.manifest import INDEX_NAME
from index.publish import PublishError, current_key, events_channel, publish, read_redis_pointer
from index.store import LocalStore
from tests.index.tampering import copy_version

OLD, NEW, NEWER = "20250103T000000Z", "20250103T000001Z", "20250103T000001Z-2"


@pytest.fixture
def store(built_bundle: Path, tmp_path: Path) -> LocalStore:
    local = LocalStore(tmp_path / "store")
    for version in (OLD, NEW, NEWER):
        copy_version(built_bundle, local, version)
    return local


def test_publish_locally_sets_current_and_history(store: LocalStore) -> None:
    pointer = publish(store, NEW)
    assert pointer.version == NEW and pointer.uri == store.path(NEW).resolve().as_uri()
    assert pointer.manifest_sha256 == manifest_sha256(store.path(NEW))
    assert store.read_pointer() == pointer
    assert store.history() == [pointer]
    assert publish(store, NEWER).version == NEWER


def test_publishing_an_older_or_the_same_version_is_refused_unless_forced(store: LocalStore) -> None:
    publish(store, NEW)
    for version in (OLD, NEW):
        with pytest.raises(
            PublishError, match=f"refusing to publish {version}: it is not newer than the current {NEW}"
        ):
            publish(store, version)
    assert store.read_pointer().version == NEW  # type: ignore[union-attr]
    assert publish(store, OLD, force=True).version == OLD


def test_an_unverifiable_bundle_is_refused(store: LocalStore) -> None:
    with (store.path(NEWER) / INDEX_NAME).open("r+b") as f:
        f.write(b"\0\0\0\0")
    with pytest.raises(PublishError, match=f"refusing to publish {NEWER}: .*{INDEX_NAME} fails its sha256 check"):
        publish(store, NEWER)
    with pytest.raises(PublishError, match=r"no manifest\.json, so it is not a snapshot"):
        publish(store, "20250103T000009Z")
    assert store.read_pointer() is None


def test_publish_with_redis_sets_the_key_then_sends_the_event(
    store: LocalStore, client: redis.Redis, prefix: str
) -> None:
    subscriber = client.pubsub()
    subscriber.subscribe(events_channel(prefix))
    assert subscriber.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    pointer = publish(store, NEW, client, prefix)
    assert read_redis_pointer(client, prefix) == pointer
    assert store.read_pointer() == pointer
    message = subscriber.get_message(timeout=5)
    assert message is not None and json.loads(message["data"]) == json.loads(pointer.model_dump_json())
    subscriber.close()


def test_redis_is_the_source_of_truth_for_newer(store: LocalStore, client: redis.Redis, prefix: str) -> None:
    publish(store, NEWER, client, prefix)
    (store.root / "CURRENT").unlink()  # the local pointer lost: Redis still says NEWER serves
    with pytest.raises(PublishError, match=f"not newer than the current {NEWER}"):
        publish(store, NEW, client, prefix)
    assert read_redis_pointer(client, prefix).version == NEWER  # type: ignore[union-attr]
    assert publish(store, NEW, client, prefix, force=True).version == NEW
    assert json.loads(client.get(current_key(prefix)))["version"] == NEW  # type: ignore[arg-type]


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_publish_and_its_refusals(store: LocalStore, cli: typer.Typer, client: redis.Redis, prefix: str) -> None:
    runner = CliRunner()
    common = ["--store", str(store.root), "--redis-url", "redis://127.0.0.1:6379/0", "--prefix", prefix]
    result = runner.invoke(cli, ["publish", NEW, *common])
    assert result.exit_code == 0, result.output
    assert f"published {NEW}" in result.output
    result = runner.invoke(cli, ["publish", OLD, *common])
    assert result.exit_code == 1 and "it is not newer than the current" in result.output
    (store.path(NEWER) / "stray.bin").write_bytes(b"x")
    result = runner.invoke(cli, ["publish", NEWER, *common])
    assert result.exit_code == 1 and "files not in the manifest: stray.bin" in result.output
    assert read_redis_pointer(client, prefix).version == NEW  # type: ignore[union-attr]
    result = runner.invoke(cli, ["publish", OLD, *common, "--force"])
    assert result.exit_code == 0 and read_redis_pointer(client, prefix).version == OLD  # type: ignore[union-attr]


def test_cli_store_gc_keeps_protected_versions(store: LocalStore, cli: typer.Typer) -> None:
    publish(store, OLD)
    publish(store, NEW)
    copy_version(store.path(OLD), store, "20250103T000002Z")
    result = CliRunner().invoke(cli, ["store", "gc", "--store", str(store.root), "--keep", "1"])
    assert result.exit_code == 0, result.output
    # NEW serves, OLD served before it, the newest is kept: only NEWER goes.
    assert store.versions() == [OLD, NEW, "20250103T000002Z"]
    assert "removed 1 version(s)" in result.output
