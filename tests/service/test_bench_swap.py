"""`ebr bench swap` end to end on a small bundle: a real server, real wrk, real Redis, loopback only.

The figures are the benchmark's to print; asserted is that it runs to the end, loses no request in either
phase, lands every swap, prints the comparison it exists for and stops what it started.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from tests.conftest import bench_servers, needs_wrk, run_bench


@needs_wrk
@pytest.mark.parametrize("through_redis", [True, False], ids=["redis-events", "local-current"])
def test_bench_swap_measures_both_phases_and_every_swap_lands(
    tmp_path: Path, redis_client: redis.Redis, through_redis: bool
) -> None:
    signal = ("--redis-url", "redis://127.0.0.1:6379/0") if through_redis else ()
    small = ("--candidates", "20000", "--seconds", "3", "--swaps", "2")
    out = run_bench("swap", *small, "--cache", str(tmp_path), *signal)
    phases = {m.group(1): m.group(2).split() for m in re.finditer(r"^(steady|swapping)\s+(.*)$", out, re.M)}
    assert set(phases) == {"steady", "swapping"}, out
    assert all(float(row[0]) > 0 and row[3] == "0" for row in phases.values()), out  # req/s, errors
    assert re.search(r"publish -> serving\s+mean [\d.]+ s", out), out
    assert re.search(r"p99 swapping / steady: [\d.]+x", out), out
    assert bench_servers() == []
