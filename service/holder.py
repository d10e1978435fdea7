"""The hot-swap holder: loads a snapshot beside the serving one, checks it, then switches one reference.

A request takes `holder.current` once and keeps that object to the end, so it finishes on the snapshot it
started with; the old snapshot is freed when the last such request lets go of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import faiss
import structlog

from index.bundle import SnapshotError, manifest_sha256, read_manifest
from index.manifest import INDEX_NAME
from index.store import LocalStore
from service.devices import Placement
from service.memory import available_bytes, expected_resident_bytes, gpu_free_bytes
from service.metrics import Metrics
from service.snapshot import Snapshot, load_snapshot

log = structlog.get_logger(__name__)


class Pacer:
    """Holds the calling thread to `share` of one core: after each step it sleeps in proportion to the CPU time
    the step took. A swap's verification and checks then take a small, steady share of the CPU beside the
    serving threads. Lowering the loader's nice value does not do this: a niced thread preempted while it holds
    the GIL stalls the event loop until the scheduler runs it again (it doubled p99 during swaps)."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._mark = time.thread_time()

    def __call__(self) -> None:
        used = time.thread_time() - self._mark
        if self.share < 1 and used > 0:
            time.sleep(used * (1 - self.share) / self.share)
        self._mark = time.thread_time()


class LoadInProgressError(Exception):
    pass


class LoadFailedError(Exception):
    pass


@dataclass(frozen=True)
class Failure:
    version: str
    reason: str
    at: float


class SnapshotHolder:
    def __init__(
        self,
        store: LocalStore,
        placement: Placement,
        metrics: Metrics,
        threads: int,
        gate_recall: float,
        on_change: Callable[[], None] = lambda: None,
        memory_limit_bytes: int | None = None,
        unload_first_when_tight: bool = False,
        mmap_index: bool = False,
        storage_options: dict[str, Any] | None = None,
        load_cpu_share: float = 1.0,
    ) -> None:
        self.store = store
        self.placement = placement
        self.metrics = metrics
        self.threads = threads
        self.gate_recall = gate_recall
        self.on_change = on_change
        self.memory_limit_bytes = memory_limit_bytes
        self.unload_first_when_tight = unload_first_when_tight
        self.mmap_index = mmap_index
        self.storage_options = storage_options
        self.load_cpu_share = load_cpu_share
        self.current: Snapshot | None = None
        self.previous_version: str | None = None
        self.loading: str | None = None
        self.last_failure: Failure | None = None
        self._last_serving: str | None = None
        self._last_serving_path: Path | None = None
        self._lock = asyncio.Lock()
        # OpenMP's thread count is per calling thread: it is set in the loader, where the gate's searches run.
        self._loader = ThreadPoolExecutor(
            1, thread_name_prefix="ebr-load", initializer=faiss.omp_set_num_threads, initargs=(threads,)
        )

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def load(
        self, version: str, wait: bool = True, manifest_sha256: str | None = None, uri: str | None = None
    ) -> Snapshot:
        """Load `version` beside the serving snapshot and switch to it; the old one serves on failure.

        With `manifest_sha256` (from the pointer) the bundle must be exactly the one that was published; with
        a remote `uri` (from the pointer) it is fetched into the local store and verified there first.
        """
        if not wait and self._lock.locked():
            raise LoadInProgressError(f"a load of {self.loading} is in progress")
        async with self._lock:
            self.loading = version
            self.on_change()
            started = time.monotonic()
            old = self.current
            loop = asyncio.get_running_loop()
            try:
                path = await loop.run_in_executor(self._loader, self._local_bundle, version, uri)
                if not self._fits_beside(path):
                    if not self.unload_first_when_tight or old is None:
                        raise MemoryError(f"{version} does not fit in memory beside {self._serving()}")
                    log.warning("unloading_first", serving=old.version, loading=version)
                    self.current = None
                    del old
                    self.on_change()
                snapshot = await loop.run_in_executor(self._loader, self._prepare, path, manifest_sha256)
                if snapshot.version != version:
                    # A pointer names a version, and serving it must mean serving that bundle, whatever the
                    # directory it was found in: a copied or renamed bundle would otherwise report a lie.
                    raise SnapshotError(f"{path}: the manifest says version {snapshot.version}, not {version}")
            except Exception as e:
                # Whatever breaks while loading (a checksum, ONNX Runtime on the golden queries, memory),
                # the snapshot is refused and the one serving stays.
                self.last_failure = Failure(version, str(e), time.time())
                self.metrics.swaps.labels(result="failed").inc()
                log.error("snapshot_refused", version=version, reason=str(e))
                restored = await self._restore_after_unload()
                raise LoadFailedError(str(e) + restored) from e
            finally:
                self.loading = None
            previous = self.current.version if self.current else self._last_serving
            self.current = snapshot
            self._last_serving, self._last_serving_path = snapshot.version, path
            if previous is not None and previous != snapshot.version:
                self.previous_version = previous
            seconds = time.monotonic() - started
            self.metrics.swap_seconds.observe(seconds)
            self.metrics.swaps.labels(result="ok").inc()
            self.metrics.set_serving(snapshot.version)
            log.info("snapshot_serving", version=snapshot.version, seconds=round(seconds, 3), **snapshot.gate)
            self.on_change()
            return snapshot

    def _serving(self) -> str:
        return self.current.version if self.current else "nothing"

    def _fits_beside(self, path: Path) -> bool:
        files = read_manifest(path).files
        needed = expected_resident_bytes([entry.size for entry in files.values()])
        available = self.memory_limit_bytes if self.memory_limit_bytes is not None else available_bytes()
        if needed > available:
            log.warning("snapshot_too_big_to_load_beside", bundle=str(path), needed=needed, available=available)
            return False
        gpu_free = gpu_free_bytes() if self.placement.device == "cuda" else None
        gpu_needed = expected_resident_bytes([files[INDEX_NAME].size])
        if gpu_free is not None and gpu_needed > gpu_free:
            log.warning("index_too_big_for_the_gpu", bundle=str(path), needed=gpu_needed, free=gpu_free)
            return False
        return True

    async def _restore_after_unload(self) -> str:
        """After a failed unload-first swap, bring back what served before, so the gap ends either way."""
        if self.current is not None or self._last_serving_path is None:
            return ""
        try:
            self.current = await asyncio.get_running_loop().run_in_executor(
                self._loader, self._prepare, self._last_serving_path
            )
        except Exception as e:
            return f"; restoring {self._last_serving} failed too: {e}"
        return f"; {self._last_serving} serves again"

    def _local_bundle(self, version: str, uri: str | None) -> Path:
        if uri is None:
            return self.store.path(version)
        if uri.startswith("file://"):
            return Path(unquote(urlparse(uri).path))
        from index.remote import fetch_uri

        return fetch_uri(uri, self.store.root, self.storage_options)

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, path: Path, expected_manifest: str | None = None) -> Snapshot:
        if expected_manifest is not None and manifest_sha256(path) != expected_manifest:
            raise SnapshotError(f"{path}: manifest is not the one the pointer published (sha256 differs)")
        pace = Pacer(self.load_cpu_share)
        snapshot = load_snapshot(path, self.placement, self.threads, self.mmap_index, pace)
        # The golden queries warm tower and index up as they check them; without them, made-up requests do.
        if not snapshot.run_quality_gate(self.gate_recall, pace):
            snapshot.warm_up()
        serving = self.current
        overlap = snapshot.golden_overlap(serving, pace) if serving is not None else None
        if overlap is not None:
            snapshot.gate["overlap_with_serving"] = round(overlap, 4)
        return snapshot
