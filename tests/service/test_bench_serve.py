"""`ebr bench serve` and `ebr bench swap` end to end on a small bundle: real servers, real wrk, loopback only.

The figures are not asserted (they are the benchmarks' to print); what is asserted is that each command runs
to the end, drives every app with no errors, stops what it started and prints the comparison it exists for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis

from service.reference import BUNDLE_VARIABLE

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="the serving benchmarks drive load with wrk (.ci/run installs it)"
)
EBR = str(Path(sys.executable).parent / "ebr")
SMALL = ("--candidates", "20000")


def run_bench(*args: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "EBR_REDIS_URL"} | {"OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([EBR, "bench", *args], capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def bench_servers() -> list[int]:
    """Processes a bench started: it gives every server it starts the bundle variable."""
    found = []
    for process in psutil.process_iter():
        try:
            if BUNDLE_VARIABLE in process.environ():
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_bench_serve_compares_ebr_with_the_reference_and_the_floor(tmp_path: Path) -> None:
    out = run_bench("serve", *SMALL, "--seconds", "2", "--light-seconds", "1", "--cache", str(tmp_path))
    rows = {m.group(1): m.group(2).split() for m in re.finditer(r"^\s*(reference|ebr|floor)\s+(\d.*)$", out, re.M)}
    assert set(rows) == {"reference", "ebr", "floor"}, out
    assert all(float(row[1]) > 0 and row[5] == "0" for row in rows.values()), out  # req/s, errors
    assert re.search(r"ebr / reference: throughput [\d.]+x", out), out
    assert re.search(r"agree on 1[0-6]/16 sampled answers", out), out
    assert bench_servers() == []


@pytest.mark.parametrize("through_redis", [True, False], ids=["redis-events", "local-current"])
def test_bench_swap_measures_both_phases_and_every_swap_lands(
    tmp_path: Path, redis_client: redis.Redis, through_redis: bool
) -> None:
    redis = ("--redis-url", "redis://127.0.0.1:6379/0") if through_redis else ()
    out = run_bench("swap", *SMALL, "--seconds", "3", "--swaps", "2", "--cache", str(tmp_path), *redis)
    phases = {m.group(1): m.group(2).split() for m in re.finditer(r"^(steady|swapping)\s+(.*)$", out, re.M)}
    assert set(phases) == {"steady", "swapping"}, out
    assert all(float(row[0]) > 0 and row[3] == "0" for row in phases.values()), out  # req/s, errors
    assert re.search(r"publish -> serving\s+mean [\d.]+ s", out), out
    assert re.search(r"p99 swapping / steady: [\d.]+x", out), out
    assert bench_servers() == []
