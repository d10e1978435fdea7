"""The hot-swap holder on real bundles: load beside, refuse, memory-aware swaps, one load at a time."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import time
import weakref
from pathlib import Path

import psutil
import pytest

from index.bundle import manifest_sha256
from index.manifest import INDEX_NAME
from index.store import LocalStore
from service.devices import choose_placement
from service.holder import LoadFailedError, LoadInProgressError, Pacer, SnapshotHolder
from service.memory import available_bytes, gpu_free_bytes
from service.metrics import Metrics
from tests.conftest import VERSIONS

V1, V2, V3 = VERSIONS


def holder_for(store: Path, **options: object) -> SnapshotHolder:
    return SnapshotHolder(LocalStore(store), choose_placement("cpu"), Metrics(), 1, 0.8, **options)  # type: ignore[arg-type]


def test_load_beside_switches_and_remembers_the_previous(store: Path) -> None:
    async def scenario() -> None:
        holder = holder_for(store)
        await holder.load(V1)
        first = holder.current
        await holder.load(V2)
        assert holder.current is not None and holder.current.version == V2
        assert holder.previous_version == V1
        assert first is not None and first.version == V1
        # V2 holds the same tower and vectors under other ids, so none of its answers are V1's.
        assert holder.current.gate["overlap_with_serving"] == 0.0
        await holder.load(V2)
        assert holder.current.gate["overlap_with_serving"] == 1.0

    asyncio.run(scenario())


def test_the_old_snapshot_is_freed_once_nothing_uses_it(store: Path) -> None:
    async def scenario() -> weakref.ref[object]:
        holder = holder_for(store)
        await holder.load(V1)
        in_flight = holder.current
        await holder.load(V2)
        assert in_flight is not None and in_flight.version == V1
        old = weakref.ref(in_flight)
        del in_flight
        return old

    old = asyncio.run(scenario())
    gc.collect()
    assert old() is None


def test_a_corrupt_bundle_is_refused_and_the_old_one_serves(store: Path) -> None:
    index = store / V2 / INDEX_NAME
    index.write_bytes(index.read_bytes()[:-10])

    async def scenario() -> None:
        holder = holder_for(store)
        await holder.load(V1)
        with pytest.raises(LoadFailedError, match="bytes"):
            await holder.load(V2)
        assert holder.current is not None and holder.current.version == V1
        assert holder.last_failure is not None and holder.last_failure.version == V2

    asyncio.run(scenario())


def test_a_bundle_other_than_the_published_one_is_refused(store: Path) -> None:
    async def scenario() -> None:
        holder = holder_for(store)
        with pytest.raises(LoadFailedError, match="not the one the pointer published"):
            await holder.load(V1, manifest_sha256=manifest_sha256(store / V2))
        await holder.load(V1, manifest_sha256=manifest_sha256(store / V1))

    asyncio.run(scenario())


def test_a_bundle_whose_manifest_names_another_version_is_refused(store: Path) -> None:
    async def scenario() -> None:
        holder = holder_for(store)
        await holder.load(V1)
        # A whole, consistent copy of V1's bundle in the directory where the store keeps V3.
        shutil.rmtree(store / V3)
        shutil.copytree(store / V1, store / V3)
        with pytest.raises(LoadFailedError, match=f"the manifest says version {V1}, not {V3}"):
            await holder.load(V3)
        assert holder.current is not None and holder.current.version == V1
        assert holder.last_failure is not None and holder.last_failure.version == V3

    asyncio.run(scenario())


def test_a_snapshot_that_cannot_fit_beside_is_refused(store: Path) -> None:
    async def scenario() -> None:
        holder = holder_for(store)
        await holder.load(V1)
        holder.memory_limit_bytes = 1
        with pytest.raises(LoadFailedError, match="does not fit"):
            await holder.load(V2)
        assert holder.current is not None and holder.current.version == V1

    asyncio.run(scenario())


def test_unload_first_swaps_with_a_gap_when_configured(store: Path) -> None:
    during_load: list[str | None] = []

    async def scenario() -> None:
        holder = holder_for(store)
        await holder.load(V1)
        holder.memory_limit_bytes = 1
        holder.unload_first_when_tight = True
        holder.on_change = lambda: during_load.append(holder.current.version if holder.current else None)
        await holder.load(V2)
        assert holder.current is not None and holder.current.version == V2
        assert holder.previous_version == V1

    asyncio.run(scenario())
    assert None in during_load


def test_a_failed_unload_first_swap_brings_the_old_one_back(store: Path) -> None:
    (store / V2 / INDEX_NAME).unlink()

    async def scenario() -> None:
        holder = holder_for(store)
        await holder.load(V1)
        holder.memory_limit_bytes = 1
        holder.unload_first_when_tight = True
        with pytest.raises(LoadFailedError, match="serves again"):
            await holder.load(V2)
        assert holder.current is not None and holder.current.version == V1

    asyncio.run(scenario())


def test_one_load_at_a_time(store: Path) -> None:
    async def scenario() -> None:
        holder = holder_for(store)
        first = asyncio.create_task(holder.load(V1))
        await asyncio.sleep(0)
        assert holder.busy
        with pytest.raises(LoadInProgressError):
            await holder.load(V2, wait=False)
        await first

    asyncio.run(scenario())


def test_available_memory_is_read_from_this_machine() -> None:
    available = available_bytes()
    assert 0 < available <= psutil.virtual_memory().total
    free_on_gpu = gpu_free_bytes()
    assert free_on_gpu is None if choose_placement("auto").device == "cpu" else free_on_gpu > 0


def test_a_memory_mapped_index_answers_like_a_loaded_one(store: Path) -> None:
    from service.snapshot import load_snapshot

    placement = choose_placement("cpu")
    loaded = load_snapshot(store / V1, placement, threads=1)
    mapped = load_snapshot(store / V1, placement, threads=1, mmap_index=True)
    golden = loaded.bundle.golden
    assert golden is not None
    queries = loaded.bundle.session.run(["embedding"], golden.inputs)[0]
    ks, excludes = [20] * len(queries), [frozenset[int]()] * len(queries)
    assert [h.ids.tolist() for h in mapped.search(queries, ks, excludes)] == [
        h.ids.tolist() for h in loaded.search(queries, ks, excludes)
    ]
    maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    assert str(store / V1 / INDEX_NAME) in maps


def test_a_bundle_without_golden_queries_is_warmed_with_made_up_requests(store: Path) -> None:
    import json

    from index.manifest import GOLDEN_NAME, MANIFEST_NAME

    (store / V2 / GOLDEN_NAME).unlink()
    manifest = json.loads((store / V2 / MANIFEST_NAME).read_text())
    del manifest["files"][GOLDEN_NAME]
    (store / V2 / MANIFEST_NAME).write_text(json.dumps(manifest))

    async def scenario() -> None:
        holder = holder_for(store)
        await holder.load(V2)
        assert holder.current is not None and holder.current.gate == {}

    asyncio.run(scenario())


def test_the_pacer_sleeps_in_proportion_to_the_cpu_the_step_used(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("service.holder.time.sleep", slept.append)
    pace = Pacer(0.25)
    started = time.thread_time()
    while time.thread_time() - started < 0.02:
        pass
    used = time.thread_time() - started
    pace()
    # A quarter of a core: three seconds asleep for each second of CPU.
    assert slept and 2.5 * used <= slept[0] <= 3.5 * used + 0.01
    Pacer(1.0)()
    assert len(slept) == 1


def test_a_paced_load_verifies_checks_and_serves_like_a_full_speed_one(store: Path) -> None:
    async def scenario() -> None:
        paced, full = holder_for(store, load_cpu_share=0.5), holder_for(store)
        await paced.load(V1)
        await full.load(V1)
        assert paced.current is not None and full.current is not None
        assert paced.current.gate == full.current.gate
        assert paced.current.gate["golden_recall"] >= 0.8

    asyncio.run(scenario())
