"""The locust scenarios against a real `ebr serve` on loopback, through `python -m loadtest.run`."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.report import verdict
from loadtest.scenarios import phase_at, phases
from service.bench_bundle import write_synthetic_export


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_export(tmp_path_factory.mktemp("export"), candidates=3000, queries=200)


def run_loadtest(export: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "loadtest.run", "--export", str(export), "--store", str(root / "store")]
    command += ["--out", str(root / "out"), "--users", "4", "--user-rate", "20", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_swap_under_load_publishes_every_version_and_drops_nothing(export: Path, tmp_path: Path) -> None:
    # The latency bound is loose on purpose: this asserts what swaps do, and the CPU here is shared.
    result = run_loadtest(
        export, tmp_path, "--scenario", "swap", "--seconds", "8", "--versions", "3", "--", "--max-p99-ms", "10000"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    versions = sorted(p.name for p in (tmp_path / "store").iterdir() if p.is_dir())
    # Whole names: two versions built in one second are `…Z` and `…Z-2`, and one must not match the other.
    published = [re.search(rf"published {re.escape(v)}(?!\S)", result.stdout) is not None for v in versions]
    assert published == [False, True, True]
    with (tmp_path / "out" / "swap_phases.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["phase"] == "swap" and int(row["requests"]) > 0 and row["failures"] == "0"
    assert (tmp_path / "out" / "swap_stats.csv").is_file()


def test_a_broken_threshold_sets_the_exit_code(export: Path, tmp_path: Path) -> None:
    result = run_loadtest(
        export, tmp_path, "--scenario", "steady", "--seconds", "3", "--versions", "1", "--", "--max-p99-ms", "0.001"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: p99" in result.stdout


def test_scenarios_cover_the_run_and_end_with_it() -> None:
    for scenario in ("steady", "step", "spike", "swap"):
        plan = phases(scenario, users=10, total_seconds=20)
        assert sum(p.seconds for p in plan) == pytest.approx(20)
        assert phase_at(plan, 19.9) is not None and phase_at(plan, 20.0) is None
    assert [p.users for p in phases("step", 10, 20, steps=4)] == [10, 20, 30, 40]
    assert [p.users for p in phases("spike", 10, 20)] == [10, 50, 10]


def test_verdict_names_each_broken_threshold() -> None:
    assert verdict(0.0, 10.0, max_fail_ratio=0.01, max_p99_ms=50) == []
    assert len(verdict(0.5, 100.0, max_fail_ratio=0.01, max_p99_ms=50)) == 2
