"""`ebr bench swap`: what a hot swap costs a serving replica, against the same replica in steady state.

One `ebr serve` process follows a store of synthetic bundles (the `ebr bench serve` bundle, copied under new
versions). wrk holds the same load through a steady phase and a swap phase; in the swap phase new versions
are published one after another. Printed: publish-to-serving time, p99 under load in both phases, and the
peak resident memory of the process in both phases, with their ratios.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import httpx
import psutil
import redis
import typer

from index.bundle import read_manifest
from index.manifest import MANIFEST_NAME
from index.publish import parse_replica_report, publish, replicas_key
from index.store import LocalStore
from service.bench_serve import (
    Measured,
    ensure_bundle,
    free_port,
    run_wrk,
    server_command,
    server_environment,
    stop_server,
    wait_ready,
    write_payloads,
)


class PeakMemory:
    """Samples a process's resident memory every few milliseconds and keeps the peak."""

    def __init__(self, pid: int, every: float = 0.01) -> None:
        self.process = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every)


def copy_as_version(store: LocalStore, source: str, version: str) -> None:
    """The same bundle under another version: a swap's cost does not depend on what the vectors say."""
    target = store.path(version)
    if target.exists():
        shutil.rmtree(target)
    staging = store.root / f".staging-{version}"
    shutil.copytree(store.path(source), staging)
    manifest = json.loads((staging / MANIFEST_NAME).read_text())
    manifest["version"] = version
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    staging.rename(target)


def wait_serving(url: str, version: str, client: redis.Redis | None, prefix: str, timeout: float = 300.0) -> None:
    """Until the replica serves `version`. With Redis, its report in the replicas hash says so, so the bench
    adds no HTTP requests of its own to the load it measures; without Redis, /readyz is asked every 50 ms."""
    deadline = time.monotonic() + timeout
    while not _serves(url, version, client, prefix):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{version} was not serving after {timeout:.0f}s")
        time.sleep(0.01 if client is not None else 0.05)


def _serves(url: str, version: str, client: redis.Redis | None, prefix: str) -> bool:
    if client is None:
        return bool(httpx.get(f"{url}/readyz", timeout=5).json().get("snapshot") == version)
    reports = [parse_replica_report(raw) for raw in client.hvals(replicas_key(prefix))]
    return any(r is not None and r.get("version") == version and r.get("state") == "serving" for r in reports)


def loaded_phase(url: str, script: Path, connections: int, seconds: float, during: object = None) -> Measured:
    result: list[Measured] = []
    load = threading.Thread(target=lambda: result.append(run_wrk(url, script, connections, 1, seconds)))
    load.start()
    if callable(during):
        during()
    load.join()
    return result[0]


def bench_swap_command(
    candidates: Annotated[int, typer.Option(help="candidates in the bundle")] = 1_000_000,
    swaps: Annotated[int, typer.Option(help="versions published during the swap phase")] = 3,
    seconds: Annotated[float, typer.Option(help="length of each phase")] = 20.0,
    connections: Annotated[int, typer.Option(help="wrk connections")] = 8,
    k: Annotated[int, typer.Option()] = 100,
    redis_url: Annotated[str | None, typer.Option(envvar="EBR_REDIS_URL", help="signal through Redis")] = None,
    cache: Annotated[Path, typer.Option(help="where the bench bundle is kept")] = Path(".ebr/bench"),
) -> None:
    """Publish-to-serving time, p99 during swaps against steady state, and peak memory during a swap."""
    bundle = ensure_bundle(cache, candidates)
    work = Path(tempfile.mkdtemp(prefix="ebr-bench-swap-"))
    store = LocalStore(work / "store")
    store.root.mkdir()
    base = bundle.name
    shutil.copytree(bundle, store.path(base))
    publish(store, base, force=True)
    client = redis.Redis.from_url(redis_url) if redis_url else None
    prefix = f"ebr-bench-swap-{int(time.time())}:snapshot"
    if client is not None:
        publish(store, base, client, prefix, force=True)
    versions = [f"{base[:-1]}Z-{n}" for n in range(2, swaps + 2)]
    for version in versions:
        copy_as_version(store, base, version)
    script, _ = write_payloads(work, read_manifest(store.path(base)), k)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "ebr.log"
    following = {"EBR_POLL_INTERVAL_S": "0.2", "EBR_REDIS_PREFIX": prefix}
    if redis_url:
        following["EBR_REDIS_URL"] = redis_url
    with log.open("wb") as handle:
        process = subprocess.Popen(
            server_command("ebr", port, 1),
            env=server_environment(store.path(base), port, 1, 1) | following,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    publish_seconds: list[float] = []
    try:
        wait_ready(process, url, log)
        run_wrk(url, script, connections, 1, 3)
        with PeakMemory(process.pid) as steady_memory:
            steady = loaded_phase(url, script, connections, seconds)

        def swap_all() -> None:
            gap = seconds / (swaps + 1)
            for version in versions:
                time.sleep(gap)
                started = time.monotonic()
                publish(store, version, client, prefix)
                wait_serving(url, version, client, prefix)
                publish_seconds.append(time.monotonic() - started)

        with PeakMemory(process.pid) as swap_memory:
            swapping = loaded_phase(url, script, connections, seconds, swap_all)
    finally:
        stop_server(process)
        shutil.rmtree(work, ignore_errors=True)
    typer.echo(
        "\n".join(
            [
                f"ebr bench swap: {candidates:,} candidates, {swaps} swaps under wrk -c{connections}, k={k}, "
                f"{'Redis events' if client else 'local CURRENT polled every 0.2 s'}",
                f"publish -> serving     mean {sum(publish_seconds) / len(publish_seconds):.2f} s, "
                f"max {max(publish_seconds):.2f} s",
                f"{'phase':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'peak RSS MiB':>14}",
                _row("steady", steady, steady_memory.peak),
                _row("swapping", swapping, swap_memory.peak),
                f"p99 swapping / steady: {swapping.p99_ms / steady.p99_ms:.2f}x (target <= 1.5x); "
                f"peak RSS swapping / steady: {swap_memory.peak / steady_memory.peak:.2f}x",
            ]
        )
    )


def _row(phase: str, measured: Measured, peak_rss: int) -> str:
    m = measured
    return f"{phase:<10}{m.requests_per_s:>9.0f}{m.p50_ms:>9.2f}{m.p99_ms:>9.2f}{m.errors:>8}{peak_rss / 2**20:>14.0f}"
