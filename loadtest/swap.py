"""Publishing snapshots while load runs: the store's versions newer than the serving one, one at a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from index.publish import publish, read_redis_pointer
from index.store import LocalStore
from index.versions import is_newer


def pending_versions(store: LocalStore, current: str | None) -> list[str]:
    """Versions a replica would move to, oldest first: it only ever follows a newer one."""
    return [v for v in store.versions() if is_newer(v, current)]


def publish_in_turn(
    store_root: Path,
    redis_url: str | None,
    prefix: str,
    every_seconds: float,
    on_published: Callable[[str], None],
    should_stop: Callable[[], bool],
) -> None:
    """Publish each pending version `every_seconds` apart (the first after one interval) until none is left."""
    import redis

    store = LocalStore(store_root)
    client = redis.Redis.from_url(redis_url) if redis_url else None
    try:
        pointer = read_redis_pointer(client, prefix) if client is not None else store.read_pointer()
        for version in pending_versions(store, pointer.version if pointer else None):
            time.sleep(every_seconds)
            if should_stop():
                return
            publish(store, version, client, prefix)
            on_published(version)
    finally:
        if client is not None:
            client.close()
