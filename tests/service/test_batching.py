"""Micro-batching on a real snapshot: batched answers equal one-by-one answers; overload and deadlines."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from service.batching import Answer, Batcher, DeadlineExceededError, OverloadedError
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
        batcher = Batcher(
            max_batch=16, max_wait_s=0.002, max_queue=100, timeout_s=10.0, metrics=metrics, on_loop=on_loop
        )
        calls = [batcher.submit(snapshot, f, k, e) for f, k, e in zip(features, ks, excludes, strict=True)]
        try:
            if together:
                return [a.hits for a in await asyncio.gather(*calls)]
            return [(await call).hits for call in calls]
        finally:
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
        batcher = Batcher(max_batch=4, max_wait_s=0.0, max_queue=3, timeout_s=1.0, metrics=Metrics())
        calls = [batcher.submit(snapshot, features, 10, frozenset()) for _ in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        batcher.close()
        return results

    results = asyncio.run(scenario())
    assert sum(isinstance(r, OverloadedError) for r in results) == 2


def test_a_request_past_its_deadline_is_dropped_not_computed(snapshot: Snapshot) -> None:
    features = requests_for(snapshot, 1)[0]

    async def scenario() -> None:
        metrics = Metrics()
        # The batch waits a second to fill; the request's deadline passes long before.
        batcher = Batcher(max_batch=4, max_wait_s=1.0, max_queue=10, timeout_s=0.05, metrics=metrics)
        with pytest.raises(DeadlineExceededError):
            await batcher.submit(snapshot, features, 10, frozenset())
        await asyncio.sleep(1.1)
        batcher.close()
        assert batch_count(metrics) == 0
        assert metrics.registry.get_sample_value("ebr_rejected_total", {"reason": "deadline"}) == 1

    asyncio.run(scenario())


def test_a_full_batch_does_not_wait_out_the_fill_time(snapshot: Snapshot) -> None:
    features = requests_for(snapshot, 4)

    async def scenario() -> float:
        batcher = Batcher(max_batch=4, max_wait_s=5.0, max_queue=10, timeout_s=10.0, metrics=Metrics())
        started = time.monotonic()
        answers = await asyncio.gather(*(batcher.submit(snapshot, f, 10, frozenset()) for f in features))
        batcher.close()
        assert [a.batch_size for a in answers] == [4] * 4
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 5.0


@pytest.mark.parametrize("on_loop", [False, True], ids=["compute-thread", "on-loop"])
def test_a_failing_batch_fails_each_of_its_requests_and_the_next_batch_runs(snapshot: Snapshot, on_loop: bool) -> None:
    good = requests_for(snapshot, 1)[0]
    broken = {name: value for name, value in good.items() if name != "region"}  # the tower needs every input

    async def scenario() -> tuple[list[object], Answer]:
        batcher = Batcher(max_batch=8, max_wait_s=0.0, max_queue=10, timeout_s=10.0, metrics=Metrics(), on_loop=on_loop)
        failed = await asyncio.gather(
            batcher.submit(snapshot, good, 10, frozenset()),
            batcher.submit(snapshot, broken, 10, frozenset()),
            return_exceptions=True,
        )
        after = await batcher.submit(snapshot, good, 10, frozenset())
        batcher.close()
        return failed, after

    failed, after = asyncio.run(scenario())
    assert all(isinstance(r, KeyError) for r in failed)
    assert len(after.hits.ids) == 10


def test_closing_answers_what_is_queued(snapshot: Snapshot) -> None:
    features = requests_for(snapshot, 1)[0]

    async def scenario() -> None:
        batcher = Batcher(max_batch=4, max_wait_s=10.0, max_queue=10, timeout_s=30.0, metrics=Metrics())
        waiting = asyncio.ensure_future(batcher.submit(snapshot, features, 10, frozenset()))
        await asyncio.sleep(0.01)
        batcher.close()
        with pytest.raises(DeadlineExceededError, match="shutting down"):
            await waiting
        with pytest.raises(OverloadedError, match="shutting down"):
            await batcher.submit(snapshot, features, 10, frozenset())

    asyncio.run(scenario())


def test_requests_past_their_deadline_on_the_compute_thread_are_answered_in_time(snapshot: Snapshot) -> None:
    """A deadline holds while batches compute: requests queued behind slow batches fail when it passes."""
    features = requests_for(snapshot, 1)[0]
    k = snapshot.manifest.num_candidates

    async def scenario() -> tuple[float, list[object]]:
        batcher = Batcher(max_batch=64, max_wait_s=0.0, max_queue=10_000, timeout_s=0.1, metrics=Metrics())
        started = time.monotonic()
        # k of the whole index for each of 2,000 requests: the queue drains far slower than 0.1 s.
        results = await asyncio.gather(
            *(batcher.submit(snapshot, features, k, frozenset()) for _ in range(2000)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        batcher.close()
        return elapsed, results

    elapsed, results = asyncio.run(scenario())
    late = [r for r in results if isinstance(r, DeadlineExceededError)]
    answered = [r for r in results if isinstance(r, Answer)]
    assert late and answered and len(late) + len(answered) == len(results)
    assert elapsed < 0.1 + 0.5  # answered, or refused with a 503, about when the deadline passed
