"""Micro-batching on a real snapshot: batched answers equal one-by-one answers; overload and deadlines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.batching import Batcher, DeadlineExceededError, OverloadedError
from service.devices import choose_placement
from service.metrics import Metrics
from service.payloads import random_features
from service.snapshot import Hits, Snapshot, load_snapshot
from service.validation import validate_features
from tests.conftest import VERSIONS


@pytest.fixture
def snapshot(store: Path) -> Snapshot:
    return load_snapshot(store / VERSIONS[0], choose_placement("cpu"), threads=1)


def requests_for(snapshot: Snapshot, count: int) -> list[dict[str, object]]:
    spec = snapshot.manifest.feature_spec
    rng = np.random.default_rng(3)
    return [validate_features(spec, random_features(spec, rng)) for _ in range(count)]  # type: ignore[misc]


def batch_count(metrics: Metrics) -> float:
    return float(metrics.registry.get_sample_value("ebr_batch_size_count") or 0.0)


@pytest.mark.parametrize("on_loop", [False, True], ids=["compute-thread", "on-loop"])
def test_concurrent_requests_share_batches_and_get_their_own_answers(snapshot: Snapshot, on_loop: bool) -> None:
    features = requests_for(snapshot, 48)
    ks = [5 + i % 20 for i in range(48)]
    excludes = [frozenset(range(i)) for i in range(48)]

    async def scenario(metrics: Metrics, together: bool) -> list[Hits]:
        batcher = Batcher(max_batch=16, max_wait_s=0.002, max_queue=100, metrics=metrics, on_loop=on_loop)
        runner = asyncio.create_task(batcher.run())
        calls = [batcher.submit(snapshot, f, k, e, 10.0) for f, k, e in zip(features, ks, excludes, strict=True)]
        try:
            if together:
                return [a.hits for a in await asyncio.gather(*calls)]
            return [(await call).hits for call in calls]
        finally:
            runner.cancel()
            batcher.close()

    batched_metrics, single_metrics = Metrics(), Metrics()
    batched = asyncio.run(scenario(batched_metrics, together=True))
    one_by_one = asyncio.run(scenario(single_metrics, together=False))
    assert [h.ids.tolist() for h in batched] == [h.ids.tolist() for h in one_by_one]
    assert all(len(h.ids) == k for h, k in zip(batched, ks, strict=True))
    assert all(not set(h.ids.tolist()) & e for h, e in zip(batched, excludes, strict=True))
    assert batch_count(single_metrics) == 48
    assert batch_count(batched_metrics) <= 48 / 4


def test_a_full_queue_is_refused_at_once(snapshot: Snapshot) -> None:
    features = requests_for(snapshot, 1)[0]

    async def scenario() -> list[object]:
        batcher = Batcher(max_batch=4, max_wait_s=0.0, max_queue=3, metrics=Metrics())
        calls = [batcher.submit(snapshot, features, 10, frozenset(), 0.2) for _ in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        batcher.close()
        return results

    results = asyncio.run(scenario())
    assert sum(isinstance(r, OverloadedError) for r in results) == 2


def test_a_request_past_its_deadline_is_dropped_not_computed(snapshot: Snapshot) -> None:
    features = requests_for(snapshot, 1)[0]

    async def scenario() -> None:
        metrics = Metrics()
        batcher = Batcher(max_batch=4, max_wait_s=0.0, max_queue=10, metrics=metrics)
        with pytest.raises(DeadlineExceededError):
            await batcher.submit(snapshot, features, 10, frozenset(), 0.05)
        runner = asyncio.create_task(batcher.run())
        await asyncio.sleep(0.1)
        runner.cancel()
        batcher.close()
        assert batch_count(metrics) == 0

    asyncio.run(scenario())
