"""Publishing: verify a bundle, then move the pointer forward (local CURRENT, Redis key, then the event)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis

from index.bundle import SnapshotError, manifest_sha256, verify_files
from index.store import LocalStore, Pointer
from index.versions import is_newer

if TYPE_CHECKING:
    # Only for the annotation: object storage needs the optional `s3` extra, publishing locally does not.
    from index.remote import ObjectStore

DEFAULT_PREFIX = "ebr:snapshot"


def current_key(prefix: str) -> str:
    return f"{prefix}:current"


def events_channel(prefix: str) -> str:
    return f"{prefix}:events"


def replicas_key(prefix: str) -> str:
    return f"{prefix}:replicas"


REPLICA_STALE_AFTER_S = 600.0


def parse_replica_report(raw: bytes | str) -> dict[str, object] | None:
    """One entry of the replicas hash, or None when another writer garbled it."""
    try:
        report = json.loads(raw)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def replica_is_live(report: dict[str, object], now: float, stale_after_s: float = REPLICA_STALE_AFTER_S) -> bool:
    """A replica's entry in the replicas hash still stands for a running replica: it has not said it stopped,
    and it reported within `stale_after_s` (replicas report on every slow-timer tick). An entry without a
    readable time counts as live: wrongly keeping a version costs disk, wrongly dropping one costs a replica."""
    if report.get("state") == "stopped":
        return False
    updated = report.get("updated_at")
    return not isinstance(updated, int | float) or now - updated <= stale_after_s


class PublishError(Exception):
    pass


def read_redis_pointer(client: redis.Redis, prefix: str) -> Pointer | None:
    raw = client.get(current_key(prefix))
    return None if raw is None else Pointer.model_validate_json(raw)


def publish(
    store: LocalStore,
    version: str,
    client: redis.Redis | None = None,
    prefix: str = DEFAULT_PREFIX,
    force: bool = False,
    remote: ObjectStore | None = None,
) -> Pointer:
    """Point serving at `version`. Refuses an unverifiable bundle, and an older version unless `force`d.

    With a `remote` object store the verified bundle is uploaded there first (manifest last) and the
    pointer names its remote URI, for replicas to fetch into a local cache and verify again.
    The local CURRENT is written first so that a replica that cannot reach Redis still finds the newest
    snapshot; with Redis, the key is the source of truth, moved forward under WATCH so two publishers
    racing cannot move it backwards, and the event is only a hint that follows it.
    """
    bundle = store.path(version)
    try:
        verify_files(bundle)
    except SnapshotError as e:
        raise PublishError(f"refusing to publish {version}: {e}") from None
    if remote is not None:
        _refuse_older(version, store.read_pointer() if client is None else read_redis_pointer(client, prefix), force)
        try:
            remote.push(bundle)
        except SnapshotError as e:
            raise PublishError(f"refusing to publish {version}: {e}") from None
    pointer = Pointer(
        version=version,
        uri=store.uri(version) if remote is None else remote.uri(version),
        manifest_sha256=manifest_sha256(bundle),
        published_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    if client is None:
        if not force:  # forcing also mends a CURRENT that no longer parses
            _refuse_older(version, store.read_pointer(), force)
        store.write_pointer(pointer)
        store.record_published(pointer)
        return pointer
    payload = pointer.model_dump_json()
    key = current_key(prefix)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                _refuse_older(version, None if raw is None else Pointer.model_validate_json(raw), force)
                store.write_pointer(pointer)
                pipe.multi()
                pipe.set(key, payload)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    store.record_published(pointer)
    client.publish(events_channel(prefix), payload)
    return pointer


def _refuse_older(version: str, current: Pointer | None, force: bool) -> None:
    if not force and current is not None and not is_newer(version, current.version):
        raise PublishError(
            f"refusing to publish {version}: it is not newer than the current {current.version} (use force)"
        )
