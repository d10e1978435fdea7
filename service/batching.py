"""Micro-batching: concurrent requests queue up and run as one tower batch and one search batch.

The queue is bounded, so overload is answered at once instead of growing latency; each request carries a
deadline and is dropped, not computed, once it has passed. Every request gets the same timeout, so requests
reach their deadlines in the order they arrived, and one timer, set for the oldest request not yet answered,
enforces them all (a timer per request costs more than the rest of queueing it). Requests are grouped by the
snapshot they took, so a batch never mixes tower and index of two snapshots.

A batch is an event-loop callback, not a task reading a queue: the first request into an empty queue
schedules one, and requests that arrive before it runs (all those read in the same loop turn, or within
`max_wait_s`) ride in it. Each request hands in a callback that receives its answer or its error, so the
HTTP layer can answer without a coroutine per request; `submit` wraps that in a future for async callers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import faiss
import numpy as np
import structlog

from service.metrics import Metrics
from service.recall_monitor import RecallMonitor
from service.snapshot import Hits, Snapshot
from service.validation import Encoded

log = structlog.get_logger(__name__)


class OverloadedError(Exception):
    pass


class DeadlineExceededError(Exception):
    pass


class Timings(NamedTuple):
    tower: float
    search: float


class Answer(NamedTuple):
    """One request's hits, and the batch it rode in: shown to clients in Server-Timing and X-Batch-Size."""

    hits: Hits
    timings: Timings
    batch_size: int


Done = Callable[[Answer | Exception], None]


class Job:
    __slots__ = ("deadline", "done", "exclude", "features", "finished", "k", "snapshot")

    def __init__(
        self, snapshot: Snapshot, features: Encoded, k: int, exclude: frozenset[int], deadline: float, done: Done
    ) -> None:
        self.snapshot = snapshot
        self.features = features
        self.k = k
        self.exclude = exclude
        self.deadline = deadline
        self.done = done
        self.finished = False

    def finish(self, result: Answer | Exception) -> None:
        """Hand the result over once; whatever comes second (an answer after the deadline) is dropped."""
        if self.finished:
            return
        self.finished = True
        try:
            self.done(result)
        except Exception:
            log.exception("answer_delivery_failed")


class Batcher:
    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        timeout_s: float,
        metrics: Metrics,
        monitor: RecallMonitor | None = None,
        threads: int = 1,
        on_loop: bool = False,
    ) -> None:
        """With `on_loop`, tower and search run on the event loop's own thread; otherwise on a compute thread.

        On the loop, a batch costs no hand-over between threads and no GIL contention with the loop, which is
        faster when a host has about one core per worker; the loop then parses nothing while a batch runs, and
        requests that arrive meanwhile wait in their sockets and form the next batch. Build it on the loop's
        thread: FAISS's thread count is set per calling thread.
        """
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.monitor = monitor
        self.waiting: deque[Job] = deque()
        self.unanswered: deque[Job] = deque()  # waiting or computing, in arrival order: by deadline
        self.sweeper: asyncio.TimerHandle | None = None
        self.scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self.filling = False  # the scheduled batch waits for `max_wait_s` to fill
        self.computing = False
        self.closed = False
        if on_loop:
            faiss.omp_set_num_threads(threads)
            self.executor = None
        else:
            self.executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="ebr-compute",
                initializer=faiss.omp_set_num_threads,
                initargs=(threads,),
            )

    def enqueue(self, snapshot: Snapshot, features: Encoded, k: int, exclude: frozenset[int], done: Done) -> None:
        """Queue one request; `done` is called exactly once, on the loop, with its answer or its error.

        Raises OverloadedError at once, without calling `done`, when the queue is full.
        """
        if self.closed:
            raise OverloadedError("the server is shutting down")
        if len(self.waiting) >= self.max_queue:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise OverloadedError(f"{len(self.waiting)} requests are queued")
        loop = asyncio.get_running_loop()
        job = Job(snapshot, features, k, exclude, loop.time() + self.timeout_s, done)
        self.waiting.append(job)
        self.unanswered.append(job)
        if self.sweeper is None:
            self.sweeper = loop.call_at(job.deadline, self._sweep)
        if self.computing:
            return
        if self.scheduled is None:
            self.filling = self.max_wait_s > 0 and len(self.waiting) < self.max_batch
            self.scheduled = loop.call_later(self.max_wait_s, self._run) if self.filling else loop.call_soon(self._run)
        elif self.filling and len(self.waiting) >= self.max_batch:
            self.scheduled.cancel()
            self.filling = False
            self.scheduled = loop.call_soon(self._run)

    async def submit(self, snapshot: Snapshot, features: Encoded, k: int, exclude: frozenset[int]) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

        def done(result: Answer | Exception) -> None:
            if future.done():
                return
            if isinstance(result, Answer):
                future.set_result(result)
            else:
                future.set_exception(result)

        self.enqueue(snapshot, features, k, exclude, done)
        return await future

    def _sweep(self) -> None:
        """Fail every request past its deadline, then wait for the next oldest one's."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        unanswered = self.unanswered
        while unanswered and (unanswered[0].finished or unanswered[0].deadline <= now):
            job = unanswered.popleft()
            if not job.finished:
                self.metrics.rejected.labels(reason="deadline").inc()
                job.finish(DeadlineExceededError(f"not answered within {self.timeout_s * 1000:.0f} ms"))
        self.sweeper = loop.call_at(unanswered[0].deadline, self._sweep) if unanswered else None

    def _run(self) -> None:
        self.scheduled = None
        batch: list[Job] = []
        while self.waiting and len(batch) < self.max_batch:
            job = self.waiting.popleft()
            if not job.finished:
                batch.append(job)
        self.metrics.queue_depth.set(len(self.waiting))
        if not batch:
            return
        groups: dict[int, list[Job]] = {}
        for job in batch:
            groups.setdefault(id(job.snapshot), []).append(job)
        if self.executor is None:
            for jobs in groups.values():
                self._deliver(jobs, _attempt(jobs))
            self._next()
            return
        self.computing = True
        computed = asyncio.get_running_loop().run_in_executor(
            self.executor, lambda: [_attempt(jobs) for jobs in groups.values()]
        )
        computed.add_done_callback(lambda outcome: self._computed(list(groups.values()), outcome))

    def _computed(self, groups: list[list[Job]], outcome: asyncio.Future[list[Computed | Exception]]) -> None:
        self.computing = False
        if outcome.cancelled():
            results: list[Computed | Exception] = [DeadlineExceededError("the server is shutting down")] * len(groups)
        elif outcome.exception() is not None:
            results = [outcome.exception()] * len(groups)  # type: ignore[list-item]
        else:
            results = outcome.result()
        for jobs, result in zip(groups, results, strict=True):
            self._deliver(jobs, result)
        self._next()

    def _next(self) -> None:
        if self.waiting and self.scheduled is None and not self.closed:
            self.scheduled = asyncio.get_running_loop().call_soon(self._run)

    def _deliver(self, jobs: list[Job], result: Computed | Exception) -> None:
        if isinstance(result, Exception):
            if not isinstance(result, DeadlineExceededError):
                log.error("batch_failed", error=repr(result), requests=len(jobs))
            for job in jobs:
                job.finish(result)
            self._forget_answered()
            return
        hits, queries, timings = result
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.tower_seconds.observe(timings.tower)
        self.metrics.search_seconds.observe(timings.search)
        if self.monitor is not None:
            served = [None if job.exclude else hit.ids for job, hit in zip(jobs, hits, strict=True)]
            self.monitor.offer(jobs[0].snapshot, queries, served)
        size = len(jobs)
        for job, found in zip(jobs, hits, strict=True):
            job.finish(Answer(found, timings, size))
        self._forget_answered()

    def _forget_answered(self) -> None:
        unanswered = self.unanswered
        while unanswered and unanswered[0].finished:
            unanswered.popleft()

    def close(self) -> None:
        """Refuse new requests and answer the queued ones with an error rather than leave them waiting."""
        self.closed = True
        for handle in (self.scheduled, self.sweeper):
            if handle is not None:
                handle.cancel()
        self.scheduled = self.sweeper = None
        self.waiting.clear()
        while self.unanswered:
            self.unanswered.popleft().finish(DeadlineExceededError("the server is shutting down"))
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


Computed = tuple[list[Hits], np.ndarray, Timings]


def _attempt(jobs: list[Job]) -> Computed | Exception:
    try:
        return _retrieve(jobs)
    except Exception as e:
        return e


def _retrieve(jobs: list[Job]) -> Computed:
    snapshot = jobs[0].snapshot
    started = time.perf_counter()
    queries = snapshot.embed([j.features for j in jobs])
    embedded = time.perf_counter()
    hits = snapshot.search(queries, [j.k for j in jobs], [j.exclude for j in jobs])
    done = time.perf_counter()
    return hits, queries, Timings(embedded - started, done - embedded)
