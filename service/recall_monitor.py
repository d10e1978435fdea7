"""Online recall: a sampled share of live queries re-run exhaustively in the background.

The bundle keeps no full-precision vectors (they would double its size), so "exact" here is an exhaustive
scan of the index's most precise stage: the refinement codes of an IVF-PQ + refine index, or every inverted
list of a plain IVF index. That measures what the coarse stage and nprobe lose, which is what can drift.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import structlog

from index.search import recall_at_k
from service.metrics import Metrics
from service.snapshot import Snapshot

log = structlog.get_logger(__name__)


def exhaustive_rows(index: faiss.Index, queries: np.ndarray, k: int) -> np.ndarray:
    if isinstance(index, faiss.IndexRefine):
        return np.asarray(index.refine_index.search(queries, k)[1])
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = ivf.nlist
        return np.asarray(index.search(queries, k, params=params)[1])
    return np.asarray(index.search(queries, k)[1])


class RecallMonitor:
    def __init__(
        self,
        metrics: Metrics,
        sample_rate: float,
        min_interval_s: float = 1.0,
        window: int = 200,
        seed: int | None = None,
    ) -> None:
        self.metrics = metrics
        self.sample_rate = sample_rate
        # An exhaustive scan of a million candidates costs tens of milliseconds of CPU: at thousands of
        # requests a second a pure sampling rate would take a core, so checks are also spaced in time.
        self.min_interval_s = min_interval_s
        self._next_check = 0.0
        self.recalls: deque[float] = deque(maxlen=window)
        self._random = random.Random(seed)
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ebr-recall", initializer=faiss.omp_set_num_threads, initargs=(1,)
        )
        self._busy = threading.Semaphore(1)

    def offer(self, snapshot: Snapshot, queries: np.ndarray, served: list[np.ndarray | None]) -> None:
        """Maybe check one query of a batch; never queues more than one check, never blocks.

        `served[i]` holds the ids answered to query i, or None where exclusions make it incomparable.
        """
        if self.sample_rate <= 0 or self._random.random() >= self.sample_rate * len(served):
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        comparable = [i for i, ids in enumerate(served) if ids is not None and len(ids)]
        if not comparable or not self._busy.acquire(blocking=False):
            return
        self._next_check = now + self.min_interval_s
        pick = self._random.choice(comparable)
        ids = served[pick]
        assert ids is not None
        self._executor.submit(self._check, snapshot, queries[pick : pick + 1].copy(), ids)

    def _check(self, snapshot: Snapshot, query: np.ndarray, served_ids: np.ndarray) -> None:
        try:
            exact_rows = exhaustive_rows(snapshot.index, query, len(served_ids))
            exact_ids = snapshot.bundle.candidate_ids[exact_rows]
            self.recalls.append(recall_at_k(served_ids[None, :], exact_ids))
            self.metrics.online_recall.set(float(np.mean(self.recalls)))
        except Exception as e:
            log.warning("recall_check_failed", error=str(e))
        finally:
            self._busy.release()

    @property
    def recall(self) -> float | None:
        return float(np.mean(self.recalls)) if self.recalls else None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
