"""A replica following a pointer into an S3-compatible store (moto's real server on loopback)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from index.publish import publish
from index.store import LocalStore
from tests.conftest import VERSIONS, RedisServer, ServerFactory
from tests.service.test_hot_swap import start, wait_for_version

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

V1, V2, _ = VERSIONS
CREDENTIALS = {"key": "test", "secret": "test"}


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_a_replica_fetches_an_s3_snapshot_into_its_store_and_serves_it(
    store: Path,
    tmp_path: Path,
    s3_endpoint: str,
    redis_server: RedisServer,
    redis_prefix: str,
    server_factory: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from index.remote import ObjectStore

    replica_store = tmp_path / "replica"
    replica_store.mkdir()
    shutil.copytree(store / V1, replica_store / V1)
    publish(LocalStore(replica_store), V1)

    remote = ObjectStore(
        f"s3://ebr-{uuid.uuid4().hex[:10]}/snapshots", {**CREDENTIALS, "client_kwargs": {"endpoint_url": s3_endpoint}}
    )
    remote.fs.mkdir(remote.url.removeprefix("s3://").split("/")[0])
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = start(server_factory, replica_store, redis_server, redis_prefix, s3_endpoint_url=s3_endpoint)

    pointer = publish(LocalStore(store), V2, redis_server.client(), redis_prefix, remote=remote)
    assert pointer.uri.startswith("s3://")
    wait_for_version(server, V2)
    assert (replica_store / V2 / "manifest.json").is_file()
