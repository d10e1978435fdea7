"""Following the published pointer: Redis key and events, or the local CURRENT file when there is no Redis.

The key is read at start, after every reconnect, on every event and on a slow timer; events are only hints.
The newest pointer seen is kept, and a single loader moves serving towards it one load at a time, so a burst
of events costs at most the load in progress plus one more. A version that keeps failing is marked bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Literal

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError

from index.publish import current_key, events_channel, parse_replica_report, replica_is_live, replicas_key
from index.store import LocalStore, Pointer
from index.versions import is_newer
from service.holder import LoadFailedError, SnapshotHolder

log = structlog.get_logger(__name__)

WatcherState = Literal["starting", "connected", "disconnected", "local"]


class Watcher:
    def __init__(
        self,
        holder: SnapshotHolder,
        store: LocalStore,
        client: aioredis.Redis | None,
        prefix: str,
        replica_id: str,
        poll_interval: float,
        retries: int = 3,
    ) -> None:
        self.holder = holder
        self.store = store
        self.client = client
        self.prefix = prefix
        self.replica_id = replica_id
        self.poll_interval = poll_interval
        self.retries = retries
        self.state: WatcherState = "starting" if client is not None else "local"
        self.wanted: Pointer | None = None
        self.pinned: str | None = None
        self.pinned_against: str | None = None
        self.failures: dict[str, int] = {}
        self.bad: set[str] = set()
        self.reconnects = 0
        self._wake = asyncio.Event()
        self._reports: set[asyncio.Task[None]] = set()
        self._stopping = False

    def stop(self) -> None:
        """End the follower at its next turn. Cancelling its task is not enough on Python 3.11: a cancellation
        that lands as one of redis-py's `asyncio.wait_for` calls completes is lost (python/cpython#86296), and
        the follower then loops on and holds the shutdown until the process is killed."""
        self._stopping = True

    def offer(self, pointer: Pointer | None, source: str) -> None:
        """Note a pointer seen anywhere; the loader acts on the newest."""
        if pointer is None:
            return
        if self.wanted is None or is_newer(pointer.version, self.wanted.version):
            log.info("pointer_seen", version=pointer.version, source=source)
            self.wanted = pointer
            self._wake.set()
        if self.pinned_against is not None and is_newer(pointer.version, self.pinned_against):
            log.info("unpinned_by_publish", pinned=self.pinned, published=pointer.version)
            self.unpin()

    def pin(self, version: str) -> None:
        self.pinned = version
        self.pinned_against = self.wanted.version if self.wanted else version

    def unpin(self) -> None:
        self.pinned = self.pinned_against = None
        self._wake.set()

    def target(self) -> Pointer | None:
        """The pointer serving should move to now, if any."""
        if self.pinned is not None or self.wanted is None:
            return None
        serving = self.holder.current.version if self.holder.current else None
        if self.wanted.version in self.bad or not is_newer(self.wanted.version, serving):
            return None
        return self.wanted

    async def run_loader(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pointer = self.target()
            if pointer is None:
                continue
            version = pointer.version
            try:
                await self.holder.load(version, manifest_sha256=pointer.manifest_sha256, uri=pointer.uri)
            except LoadFailedError:
                count = self.failures.get(version, 0) + 1
                self.failures[version] = count
                if count >= self.retries:
                    self.bad.add(version)
                    log.error("version_marked_bad", version=version, attempts=count)
                else:
                    await asyncio.sleep(min(5.0, 0.2 * 2**count))
                    self._wake.set()
            await self.report()

    async def run_follower(self) -> None:
        if self.client is None:
            while not self._stopping:
                self.offer(self._local_pointer(), "local")
                await asyncio.sleep(self.poll_interval)
        # The local CURRENT is where a replica starts from when Redis has no pointer or cannot be reached.
        self.offer(self._local_pointer(), "local")
        backoff = 0.1
        while not self._stopping:
            try:
                await self._follow_redis()
            except Exception as e:
                # Redis errors, a half-open socket timing out, a pointer that does not parse: the follower
                # reconnects and meanwhile serving goes on from what it has.
                if self.state == "connected":
                    self.reconnects += 1
                    backoff = 0.1
                self.state = "disconnected"
                log.warning("redis_unavailable", error=str(e), retry_in=backoff)
                self.offer(self._local_pointer(), "local fallback")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _follow_redis(self) -> None:
        assert self.client is not None
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(events_channel(self.prefix))
            self.state = "connected"
            await self._read_key("reconnect")
            await self.report()
            while not self._stopping:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.poll_interval)
                if message is not None and message.get("type") == "message":
                    # An event is a hint: one that does not parse only sends the replica to the key.
                    with contextlib.suppress(ValidationError):
                        self.offer(Pointer.model_validate_json(message["data"]), "event")
                    await self._read_key("event")
                else:
                    await pubsub.ping()
                    await self._read_key("timer")
                    await self.report()
        finally:
            await pubsub.aclose()

    async def _read_key(self, source: str) -> None:
        assert self.client is not None
        raw = await self.client.get(current_key(self.prefix))
        self.offer(None if raw is None else Pointer.model_validate_json(raw), source)

    def _local_pointer(self) -> Pointer | None:
        try:
            return self.store.read_pointer()
        except (OSError, ValidationError):
            return None

    def status(self) -> dict[str, object]:
        return {
            "state": self.state,
            "wanted": self.wanted.version if self.wanted else None,
            "pinned": self.pinned,
            "bad_versions": sorted(self.bad),
            "reconnects": self.reconnects,
        }

    def replica_state(self) -> str:
        if self.holder.loading:
            return "loading"
        return "serving" if self.holder.current else "starting"

    def report_soon(self) -> None:
        """Report from synchronous code; the task is kept until done so it is not collected half-way."""
        task = asyncio.get_running_loop().create_task(self.report())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def report(self, state: str | None = None) -> None:
        """Write this replica's view into the fleet hash; a Redis outage only skips the write."""
        if self.client is None:
            return
        current = self.holder.current
        value = json.dumps(
            {
                "version": current.version if current else None,
                "state": state or self.replica_state(),
                "updated_at": time.time(),
            }
        )
        try:
            await self.client.hset(replicas_key(self.prefix), self.replica_id, value)
        except (RedisError, OSError) as e:
            log.warning("replica_report_failed", error=str(e))

    async def fleet(self) -> dict[str, object]:
        """Every replica's entry, each marked `live` or not; one another writer garbled is shown as such."""
        if self.client is None:
            return {}
        try:
            raw = await self.client.hgetall(replicas_key(self.prefix))
        except (RedisError, OSError) as e:
            return {"error": str(e)}
        now = time.time()
        fleet: dict[str, object] = {}
        for name, value in raw.items():
            report = parse_replica_report(value)
            if report is None:
                text = value if isinstance(value, str) else value.decode("latin-1")
                report = {"error": "unreadable report", "raw": text[:200], "live": False}
            else:
                report["live"] = replica_is_live(report, now)
            fleet[name.decode() if isinstance(name, bytes) else name] = report
        return fleet
