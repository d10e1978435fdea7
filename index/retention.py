"""Retention: which versions must survive (serving, previous, pinned, in use by a replica) and the sweep."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import redis

from index.publish import (
    REPLICA_STALE_AFTER_S,
    parse_replica_report,
    read_redis_pointer,
    replica_is_live,
    replicas_key,
)
from index.store import LocalStore


class RetainingStore(Protocol):
    def retain(self, keep: int, protected: set[str]) -> list[str]: ...

    def clean_staging(self, older_than_seconds: float = 3600.0) -> list[str]: ...


@dataclass(frozen=True)
class Collected:
    removed: list[str]
    staging: list[str]
    protected: set[str]


def protected_versions(
    store: LocalStore,
    client: redis.Redis | None,
    prefix: str,
    pinned: Iterable[str] = (),
    replica_stale_after_s: float = REPLICA_STALE_AFTER_S,
) -> set[str]:
    """The serving version (local CURRENT and the Redis key), the one published before it (a rollback's
    target), every version a live replica reports holding, and the pinned ones. A replica that stopped, or
    has not reported for `replica_stale_after_s`, protects nothing: it would otherwise keep its version
    forever."""
    protected = set(pinned)
    serving = [store.read_pointer()]
    if client is not None:
        serving.append(read_redis_pointer(client, prefix))
        now = time.time()
        for raw in client.hvals(replicas_key(prefix)):
            report = parse_replica_report(raw)
            if (
                report is not None
                and isinstance(report.get("version"), str)
                and replica_is_live(report, now, replica_stale_after_s)
            ):
                protected.add(str(report["version"]))
    current = {p.version for p in serving if p is not None}
    protected |= current
    previous = [p.version for p in store.history() if p.version not in current]
    if previous:
        protected.add(previous[-1])
    return protected


def collect_garbage(
    target: RetainingStore, keep: int, protected: set[str], staging_age_seconds: float = 3600.0
) -> Collected:
    removed = target.retain(keep, protected)
    staging = target.clean_staging(staging_age_seconds)
    return Collected(removed, staging, protected)
