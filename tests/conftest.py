"""Shared fixtures: one small trained export per session, and stores with bundles built from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
import uvicorn

from service.bench_serve import free_port
from service.http import HTTP_PROTOCOL
from service.reference import BUNDLE_VARIABLE

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TrainedExport:
    root: Path
    data: object


@pytest.fixture(scope="session")
def trained_export(tmp_path_factory: pytest.TempPathFactory) -> TrainedExport:
    """A two-tower model trained for real on small synthetic data, exported as `index/` expects it."""
    from export.pipeline import run_export
    from export.synthetic import SyntheticConfig, generate
    from export.train import TrainConfig

    data = generate(SyntheticConfig(num_users=1500, num_candidates=4000, num_clusters=80, seed=7))
    result = run_export(
        data, TrainConfig(epochs=3, dim=32, seed=7, batch_size=256, lr=1e-2), tmp_path_factory.mktemp("export")
    )
    return TrainedExport(result.root, data)


VERSIONS = ("20260101T000000Z", "20260102T000000Z", "20260103T000000Z")
ID_STRIDE = 1_000_000


def version_of_id(candidate_id: int) -> str:
    """Each test version serves its own id range, so a response shows which snapshot produced it."""
    return VERSIONS[candidate_id // ID_STRIDE]


@pytest.fixture(scope="session")
def other_tower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tower of the same shape as `trained_export`'s, trained apart: it does not fit that export's index."""
    from export.pipeline import run_export
    from export.synthetic import SyntheticConfig, generate
    from export.train import TrainConfig

    data = generate(SyntheticConfig(num_users=1500, num_candidates=4000, num_clusters=80, seed=8))
    result = run_export(data, TrainConfig(epochs=1, dim=32, seed=8), tmp_path_factory.mktemp("other"))
    return result.root / "user_tower.onnx"


def build_version(export_root: Path, store_root: Path, version: str, id_offset: int = 0) -> Path:
    from dataclasses import replace

    from index.export_dir import read_export
    from index.snapshot import build_snapshot
    from index.store import LocalStore

    export = read_export(export_root)
    export = replace(export, candidate_ids=export.candidate_ids + id_offset)
    return build_snapshot(export, LocalStore(store_root), version=version, k=50)


@pytest.fixture(scope="session")
def built_bundles(trained_export: TrainedExport, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine store with three versions; tests copy it rather than build again."""
    root = tmp_path_factory.mktemp("pristine-store")
    for n, version in enumerate(VERSIONS):
        build_version(trained_export.root, root, version, id_offset=n * ID_STRIDE)
    return root


@pytest.fixture
def store(built_bundles: Path, tmp_path: Path) -> Path:
    """A store holding the three built versions, with the first one published locally."""
    import shutil

    from index.publish import publish
    from index.store import LocalStore

    root = tmp_path / "store"
    shutil.copytree(built_bundles, root)
    publish(LocalStore(root), "20260101T000000Z")
    return root


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("these tests need Redis on 127.0.0.1:6379 (.ci/run starts one)")
    yield client
    client.close()


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"ebr-test-{uuid.uuid4().hex[:8]}:snapshot"
    yield prefix
    for key in redis_client.scan_iter(f"{prefix}*"):
        redis_client.delete(key)


@dataclass
class Server:
    """A real `ebr serve` process on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(store: Path, log: Path, **settings: str) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "EBR_STORE": str(store),
        "EBR_PORT": str(port),
        "EBR_DEVICE": "cpu",
        "OMP_WAIT_POLICY": "PASSIVE",
        **{f"EBR_{k.upper()}": v for k, v in settings.items()},
    }
    handle = log.open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "ebr"), "serve"],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    return Server(process, f"http://127.0.0.1:{port}", log)


@contextmanager
def running(app: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    """A real uvicorn with ebr's protocol, in a thread, on a free loopback port."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=HTTP_PROTOCOL, log_level="critical")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(10)


ServerFactory = Callable[..., Server]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[Server] = []

    def factory(store: Path, **settings: str) -> Server:
        server = start_server(store, tmp_path / f"server-{len(started)}.log", **settings)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@dataclass
class RedisServer:
    """A redis-server of the test's own on a loopback port, so tests can stop and restart it."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, cwd=self.workdir, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


EBR = str(Path(sys.executable).parent / "ebr")
needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="the serving benchmarks drive load with wrk (.ci/run installs it)"
)


def run_bench(*args: str) -> str:
    """`ebr bench ...` to the end, as a user runs it; its printout."""
    environment = {k: v for k, v in os.environ.items() if k != "EBR_REDIS_URL"} | {"OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([EBR, "bench", *args], capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def bench_servers() -> list[int]:
    """Processes a bench started and left running: it gives every server it starts the bundle variable."""
    found = []
    for process in psutil.process_iter():
        try:
            if BUNDLE_VARIABLE in process.environ():
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
