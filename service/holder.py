"""The hot-swap holder: loads a snapshot beside the serving one, checks it, then switches one reference.

A request takes `holder.current` once and keeps that object to the end, so it finishes on the snapshot it
started with; the old snapshot is freed when the last such request lets go of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from index.bundle import SnapshotError
from index.store import LocalStore
from service.devices import Placement
from service.metrics import Metrics
from service.snapshot import QualityGateError, Snapshot, load_snapshot

log = structlog.get_logger(__name__)


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
    ) -> None:
        self.store = store
        self.placement = placement
        self.metrics = metrics
        self.threads = threads
        self.gate_recall = gate_recall
        self.on_change = on_change
        self.current: Snapshot | None = None
        self.previous_version: str | None = None
        self.loading: str | None = None
        self.last_failure: Failure | None = None
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def load(self, version: str, wait: bool = True) -> Snapshot:
        """Load `version` beside the serving snapshot and switch to it; the old one serves on failure."""
        if not wait and self._lock.locked():
            raise LoadInProgressError(f"a load of {self.loading} is in progress")
        async with self._lock:
            self.loading = version
            self.on_change()
            started = time.monotonic()
            try:
                snapshot = await asyncio.to_thread(self._prepare, version)
            except (SnapshotError, QualityGateError, OSError, RuntimeError) as e:
                self.last_failure = Failure(version, str(e), time.time())
                self.metrics.swaps.labels(result="failed").inc()
                log.error("snapshot_refused", version=version, reason=str(e))
                raise LoadFailedError(str(e)) from e
            finally:
                self.loading = None
            old = self.current
            self.current = snapshot
            if old is not None and old.version != snapshot.version:
                self.previous_version = old.version
            seconds = time.monotonic() - started
            self.metrics.swap_seconds.observe(seconds)
            self.metrics.swaps.labels(result="ok").inc()
            self.metrics.set_serving(snapshot.version)
            log.info("snapshot_serving", version=snapshot.version, seconds=round(seconds, 3), **snapshot.gate)
            self.on_change()
            return snapshot

    def _prepare(self, version: str) -> Snapshot:
        snapshot = load_snapshot(self.store.path(version), self.placement, self.threads)
        snapshot.warm_up()
        snapshot.run_quality_gate(self.gate_recall)
        return snapshot
