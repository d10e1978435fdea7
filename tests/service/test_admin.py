"""Admin on a tiny real app following a local store: reload, rollback, pinning, one reload at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.publish import publish
from index.store import LocalStore
from service.app import create_app
from service.settings import Settings
from tests.conftest import VERSIONS
from tests.service.test_app import wait_ready

V1, V2, V3 = VERSIONS
AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def admin(store: Path) -> Iterator[TestClient]:
    app = create_app(Settings(store=store, device="cpu", admin_token="s3cret", poll_interval_s=0.1))
    with TestClient(app, headers=AUTH) as client:
        wait_ready(client)
        yield client


def serving(client: TestClient) -> str:
    return str(client.get("/readyz").json()["snapshot"])


def wait_serving(client: TestClient, version: str) -> None:
    deadline = time.monotonic() + 20
    while serving(client) != version:
        assert time.monotonic() < deadline, f"never moved to {version}"
        time.sleep(0.05)


def test_following_the_local_pointer(store: Path, admin: TestClient) -> None:
    publish(LocalStore(store), V2)
    wait_serving(admin, V2)
    status = admin.get("/admin/status").json()
    assert status["previous"] == V1
    assert status["published"] == V2
    assert status["watcher"]["state"] == "local"


def test_rollback_pins_until_a_newer_publish(store: Path, admin: TestClient) -> None:
    publish(LocalStore(store), V2)
    wait_serving(admin, V2)
    assert admin.post("/admin/rollback").json() == {"serving": V1, "pinned": V1}
    time.sleep(0.5)
    assert serving(admin) == V1
    publish(LocalStore(store), V3)
    wait_serving(admin, V3)
    assert admin.get("/admin/status").json()["watcher"]["pinned"] is None


def test_reload_to_a_version_pins_it_and_plain_reload_unpins(store: Path, admin: TestClient) -> None:
    publish(LocalStore(store), V3)
    wait_serving(admin, V3)
    assert admin.post("/admin/reload", json={"version": V2}).json() == {"serving": V2, "pinned": V2}
    time.sleep(0.5)
    assert serving(admin) == V2
    assert admin.post("/admin/reload").json() == {"serving": V3, "pinned": None}


def test_reload_of_a_missing_version_is_refused_and_serving_goes_on(admin: TestClient) -> None:
    response = admin.post("/admin/reload", json={"version": "20990101T000000Z"})
    assert response.status_code == 422
    assert "20990101T000000Z" in response.json()["detail"]
    assert serving(admin) == V1


def test_rollback_without_a_previous_version_is_a_conflict(admin: TestClient) -> None:
    assert admin.post("/admin/rollback").status_code == 409


def test_a_second_reload_while_one_runs_gets_409(admin: TestClient) -> None:
    codes: list[int] = []

    def reload(version: str) -> None:
        codes.append(admin.post("/admin/reload", json={"version": version}).status_code)

    for _ in range(5):
        threads = [threading.Thread(target=reload, args=(v,)) for v in (V2, V3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if 409 in codes:
            break
    assert 409 in codes
    assert set(codes) <= {200, 409}


def test_a_garbled_current_file_is_survived(store: Path, admin: TestClient) -> None:
    (store / "CURRENT").write_text("{not a pointer")
    time.sleep(0.5)
    assert serving(admin) == V1
    publish(LocalStore(store), V2, force=True)
    wait_serving(admin, V2)
