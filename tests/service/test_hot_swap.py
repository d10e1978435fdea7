"""Fault tests against real `ebr serve` processes, a real Redis and real bundles; loopback only, bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

from index.bundle import sha256_of
from index.manifest import INDEX_NAME, MANIFEST_NAME, TOWER_NAME
from index.publish import current_key, events_channel, publish, replicas_key
from index.store import LocalStore, Pointer
from service.bench_serve import free_port
from tests.conftest import VERSIONS, RedisServer, Server, ServerFactory, version_of_id

ADMIN = {"Authorization": "Bearer t0ken"}
FEATURES = {"region": 1, "activity": 0.2, "history": [3, 9]}
V1, V2, V3 = VERSIONS


@dataclass
class Load:
    """Clients hammering /v1/retrieve from threads until stopped (or a hard cap), recording every answer."""

    url: str
    threads: int = 4
    max_seconds: float = 60.0
    statuses: Counter[int] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    wrong_ids: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]

    def __enter__(self) -> Load:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout=30)

    def _run(self) -> None:
        ends = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set() and time.monotonic() < ends:
                try:
                    response = client.post("/v1/retrieve", json={"features": FEATURES, "k": 20})
                except httpx.HTTPError as e:
                    with self.lock:
                        self.errors.append(repr(e))
                    continue
                with self.lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        version = response.headers["X-Snapshot-Version"]
                        self.versions[version] += 1
                        self.wrong_ids += sum(version_of_id(i) != version for i in response.json()["ids"])

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


def serving(server: Server) -> str | None:
    body = httpx.get(f"{server.url}/readyz", timeout=5).json()
    return body.get("snapshot")


def wait_for_version(server: Server, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while serving(server) != version:
        assert time.monotonic() < deadline, f"{version} never served; serving {serving(server)}"
        time.sleep(0.05)


def admin_status(server: Server) -> dict[str, object]:
    return httpx.get(f"{server.url}/admin/status", headers=ADMIN, timeout=5).json()  # type: ignore[no-any-return]


def swap_count(server: Server) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith('ebr_swaps_total{result="ok"}'):
            return float(line.split()[-1])
    return 0.0


def start(server_factory: ServerFactory, store: Path, redis: RedisServer | None, prefix: str, **extra: str) -> Server:
    settings = {"poll_interval_s": "0.5", "admin_token": "t0ken", "redis_prefix": prefix, **extra}
    if redis is not None:
        settings["redis_url"] = redis.url
    server = server_factory(store, **settings)
    server.wait_ready()
    return server


def test_swaps_under_load_drop_nothing_and_never_mix_snapshots(
    store: Path, redis_server: RedisServer, redis_prefix: str, server_factory: ServerFactory
) -> None:
    server = start(server_factory, store, redis_server, redis_prefix)
    local = LocalStore(store)
    with Load(server.url) as load:
        for version in (V2, V3):
            time.sleep(1.0)
            publish(local, version, redis_server.client(), redis_prefix)
            wait_for_version(server, version)
        time.sleep(1.0)
        with httpx.Client(base_url=server.url, headers=ADMIN) as admin:
            assert admin.post("/admin/rollback").json()["serving"] == V2
            time.sleep(1.0)
            assert admin.post("/admin/reload").json()["serving"] == V3
        time.sleep(1.0)
    print(f"swap under load: {load.total} requests, statuses {dict(load.statuses)}, versions {dict(load.versions)}")
    assert load.errors == []
    assert set(load.statuses) == {200}
    assert load.wrong_ids == 0
    assert set(load.versions) == {V1, V2, V3}


def corrupt_copy(store: Path, source: str, version: str, damage: str, other_tower: Path | None = None) -> None:
    """A new version dir, damaged after it was written, pointed to directly as a bad publisher would."""
    target = store / version
    shutil.copytree(store / source, target)
    manifest = (target / MANIFEST_NAME).read_text().replace(f'"version": "{source}"', f'"version": "{version}"')
    (target / MANIFEST_NAME).write_text(manifest)
    index = target / INDEX_NAME
    if damage == "flipped":
        data = bytearray(index.read_bytes())
        data[len(data) // 2] ^= 0xFF
        index.write_bytes(bytes(data))
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    elif damage == "other tower":
        assert other_tower is not None
        shutil.copyfile(other_tower, target / TOWER_NAME)
        old_sha = sha256_of(store / source / TOWER_NAME)
        text = (target / MANIFEST_NAME).read_text().replace(old_sha, sha256_of(target / TOWER_NAME))
        size = (store / source / TOWER_NAME).stat().st_size
        text = text.replace(f'"size": {size},', f'"size": {(target / TOWER_NAME).stat().st_size},', 1)
        (target / MANIFEST_NAME).write_text(text)


def pointer_to(store: LocalStore, version: str) -> Pointer:
    """A pointer made by hand, skipping the verification that `publish` would do."""
    return Pointer(
        version=version,
        uri=store.uri(version),
        manifest_sha256=sha256_of(store.path(version) / MANIFEST_NAME),
        published_at="2026-01-01T00:00:00Z",
    )


def point_at(store: Path, redis: RedisServer, prefix: str, version: str) -> None:
    pointer = pointer_to(LocalStore(store), version)
    client = redis.client()
    client.set(current_key(prefix), pointer.model_dump_json())
    client.publish(events_channel(prefix), pointer.model_dump_json())


def test_bad_bundles_are_refused_and_the_old_one_keeps_serving(
    store: Path,
    redis_server: RedisServer,
    redis_prefix: str,
    server_factory: ServerFactory,
    other_tower: Path,
) -> None:
    server = start(server_factory, store, redis_server, redis_prefix)
    cases = {
        "20260201T000000Z": ("flipped", "sha256"),
        "20260202T000000Z": ("truncated", "bytes"),
        "20260203T000000Z": ("other tower", "golden recall"),
    }
    with Load(server.url, threads=2) as load:
        for version, (damage, reason) in cases.items():
            corrupt_copy(store, V1, version, damage, other_tower)
            point_at(store, redis_server, redis_prefix, version)
            deadline = time.monotonic() + 30
            while version not in admin_status(server)["watcher"]["bad_versions"]:  # type: ignore[index]
                assert time.monotonic() < deadline, admin_status(server)
                assert httpx.get(f"{server.url}/readyz").status_code == 200
                time.sleep(0.1)
            failure = admin_status(server)["last_failure"]
            print(f"{damage}: refused: {failure['reason']}")  # type: ignore[index]
            assert failure["version"] == version  # type: ignore[index]
            assert reason in failure["reason"]  # type: ignore[index]
            assert serving(server) == V1
    assert set(load.statuses) == {200} and load.errors == []


def test_redis_down_at_start_serves_the_local_snapshot(
    store: Path, redis_prefix: str, server_factory: ServerFactory, tmp_path: Path
) -> None:
    nowhere = RedisServer(port=free_port(), workdir=tmp_path)
    server = start(server_factory, store, nowhere, redis_prefix)
    assert serving(server) == V1
    assert admin_status(server)["watcher"]["state"] == "disconnected"  # type: ignore[index]
    response = httpx.post(f"{server.url}/v1/retrieve", json={"features": FEATURES})
    assert response.status_code == 200


def test_redis_restart_and_missed_events_converge_through_the_key(
    store: Path, redis_server: RedisServer, redis_prefix: str, server_factory: ServerFactory
) -> None:
    server = start(server_factory, store, redis_server, redis_prefix)
    local = LocalStore(store)
    redis_server.stop()
    time.sleep(1.0)
    assert httpx.post(f"{server.url}/v1/retrieve", json={"features": FEATURES}).status_code == 200
    redis_server.start()
    client = redis_server.client()
    # The key moves while no event reaches the replica and CURRENT stays put: only the key can bring it along.
    client.set(current_key(redis_prefix), pointer_to(local, V2).model_dump_json())
    wait_for_version(server, V2)
    status = admin_status(server)
    assert status["watcher"]["reconnects"] >= 1  # type: ignore[index]
    assert status["fleet"][status["replica"]]["version"] == V2  # type: ignore[index]


def test_a_burst_of_events_never_downgrades_and_costs_at_most_two_loads(
    store: Path, redis_server: RedisServer, redis_prefix: str, server_factory: ServerFactory
) -> None:
    server = start(server_factory, store, redis_server, redis_prefix)
    before = swap_count(server)
    client = redis_server.client()
    local = LocalStore(store)
    pointers = {v: pointer_to(local, v) for v in VERSIONS}
    rng = np.random.default_rng(0)
    client.set(current_key(redis_prefix), pointers[V3].model_dump_json())
    seen = set()
    for version in rng.choice(VERSIONS, size=100):
        client.publish(events_channel(redis_prefix), pointers[str(version)].model_dump_json())
        seen.add(serving(server))
    wait_for_version(server, V3)
    time.sleep(1.5)
    loads = swap_count(server) - before
    print(f"100 events: {loads:.0f} loads, served {sorted(v for v in seen if v)}")
    assert serving(server) == V3
    assert loads <= 2


def test_fifty_swaps_leave_memory_and_descriptors_where_they_were(
    store: Path, redis_prefix: str, server_factory: ServerFactory
) -> None:
    server = start(server_factory, store, None, redis_prefix)
    process = psutil.Process(_serving_pid(server))
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as admin:

        def swap(n: int) -> None:
            for i in range(n):
                response = admin.post("/admin/reload", json={"version": (V2, V3)[i % 2]})
                assert response.status_code == 200, response.text
                admin.post("/v1/retrieve", json={"features": FEATURES})

        swap(6)
        rss, fds = process.memory_info().rss, process.num_fds()
        swap(50)
        rss_after, fds_after = process.memory_info().rss, process.num_fds()
    print(f"50 swaps: rss {rss / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB, fds {fds} -> {fds_after}")
    assert rss_after <= rss * 1.1
    assert fds_after <= fds * 1.1


def _serving_pid(server: Server) -> int:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return children[0].pid if children else server.process.pid


def test_sigterm_under_load_lets_every_request_finish(
    store: Path, redis_prefix: str, server_factory: ServerFactory
) -> None:
    server = start(server_factory, store, None, redis_prefix, drain_seconds="1.5")
    with Load(server.url, threads=4, max_seconds=30) as load:
        time.sleep(1.0)
        os.kill(_serving_pid(server), signal.SIGTERM)
        # A load balancer's view: stop routing here as soon as readiness fails.
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/readyz").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        load.stop.set()
    # uvicorn re-raises SIGTERM once its graceful shutdown is done, so the status is -SIGTERM, not 0.
    assert server.process.wait(timeout=30) == -signal.SIGTERM
    assert "Application shutdown complete" in server.log.read_text()
    print(f"SIGTERM under load: {load.total} requests, statuses {dict(load.statuses)}, errors {len(load.errors)}")
    assert load.errors == []
    assert set(load.statuses) == {200}


def test_the_fleet_view_counts_live_replicas_only_and_survives_a_garbled_report(
    store: Path, redis_server: RedisServer, redis_prefix: str, server_factory: ServerFactory
) -> None:
    server = start(server_factory, store, redis_server, redis_prefix)
    client = redis_server.client()
    silent = {"version": V2, "state": "serving", "updated_at": time.time() - 3600}
    client.hset(replicas_key(redis_prefix), "silent", json.dumps(silent))
    client.hset(replicas_key(redis_prefix), "garbled", "{not json")
    publish(LocalStore(store), V2, client, redis_prefix)
    deadline = time.monotonic() + 30
    while (status := admin_status(server))["fleet"][status["replica"]]["version"] != V2:  # type: ignore[index]
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    fleet: dict[str, dict[str, object]] = status["fleet"]  # type: ignore[assignment]
    assert fleet[status["replica"]]["live"] is True  # type: ignore[index]
    assert fleet["silent"]["live"] is False
    assert fleet["garbled"]["error"] == "unreadable report"
    assert status["fleet_serving_published"] == 1


def wait_for_fleet_serving_published(server: Server, replicas: int) -> dict[str, dict[str, object]]:
    deadline = time.monotonic() + 60
    while True:
        status = admin_status(server)
        fleet = status["fleet"]
        if status["fleet_serving_published"] == replicas:
            return fleet  # type: ignore[return-value]
        assert time.monotonic() < deadline, fleet
        time.sleep(0.2)


def test_each_worker_follows_on_its_own_and_reports_to_the_fleet(
    store: Path, redis_server: RedisServer, redis_prefix: str, server_factory: ServerFactory
) -> None:
    server = start(server_factory, store, redis_server, redis_prefix, workers="2")
    publish(LocalStore(store), V2, redis_server.client(), redis_prefix)
    fleet = wait_for_fleet_serving_published(server, 2)
    assert len(fleet) == 2
    assert {r["state"] for r in fleet.values()} == {"serving"}  # type: ignore[attr-defined]

    sent = 40
    for _ in range(sent):  # a new connection each, so the requests spread over both workers
        assert httpx.post(f"{server.url}/v1/retrieve", json={"features": FEATURES}).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    counted = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('ebr_request_seconds_count{route="/v1/retrieve",status="200"}')
    )
    assert counted == sent  # both workers' requests, whichever worker answered the scrape


def test_sigterm_ends_every_worker_following_redis_and_each_reports_itself_stopped(
    store: Path, redis_server: RedisServer, redis_prefix: str, server_factory: ServerFactory
) -> None:
    server = start(server_factory, store, redis_server, redis_prefix, workers="2")
    wait_for_fleet_serving_published(server, 2)
    workers = psutil.Process(server.process.pid).children(recursive=True)

    server.process.terminate()
    # Without Watcher.stop a worker's follower could swallow the cancel and hold the shutdown for good.
    assert server.process.wait(timeout=20) == 0
    _, still_running = psutil.wait_procs(workers, timeout=10)
    assert still_running == []
    reports = redis_server.client().hvals(replicas_key(redis_prefix))
    assert [json.loads(report)["state"] for report in reports] == ["stopped", "stopped"]


def test_a_garbled_event_sends_the_replica_to_the_key_without_reconnecting(
    store: Path, redis_server: RedisServer, redis_prefix: str, server_factory: ServerFactory
) -> None:
    server = start(server_factory, store, redis_server, redis_prefix, poll_interval_s="30")
    client = redis_server.client()
    client.set(current_key(redis_prefix), pointer_to(LocalStore(store), V2).model_dump_json())
    client.publish(events_channel(redis_prefix), b"{garbled")
    wait_for_version(server, V2, timeout=20)
    assert admin_status(server)["watcher"]["reconnects"] == 0  # type: ignore[index]
