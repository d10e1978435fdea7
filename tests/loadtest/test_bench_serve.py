"""The serving benchmark on tiny synthetic bundles: its reference and floor apps, payloads, the wrk check, and
the whole command end to end (real servers and wrk on loopback; its figures are printed, not asserted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.bundle import read_manifest
from index.export_dir import read_export
from index.publish import publish
from index.snapshot import build_snapshot
from index.store import LocalStore
from service.app import create_app
from service.bench_bundle import write_synthetic_export
from service.bench_serve import write_payloads
from service.reference import bare_app, floor_app, reference_app
from service.settings import Settings
from tests.conftest import bench_servers, needs_wrk, run_bench
from tests.service.test_app import wait_ready


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    export = write_synthetic_export(root / "export", candidates=3000, queries=200)
    return build_snapshot(read_export(export), LocalStore(root / "store"), version="20260101T000000Z")


def test_the_synthetic_bundle_reaches_the_recall_target(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    assert manifest.num_candidates == 3000 and manifest.dim == 64
    assert manifest.build_report.recall_at_k >= 0.95


@pytest.fixture
def ebr(bundle: Path) -> Iterator[TestClient]:
    """ebr serving the bench bundle, ready."""
    publish(LocalStore(bundle.parent), bundle.name, force=True)
    with TestClient(create_app(Settings(store=bundle.parent, device="cpu", poll_interval_s=0.2))) as client:
        wait_ready(client)
        yield client


def test_the_reference_gives_ebr_answers_to_the_bench_payloads(bundle: Path, ebr: TestClient, tmp_path: Path) -> None:
    _, bodies = write_payloads(tmp_path, read_manifest(bundle), k=20)
    with TestClient(reference_app(bundle, threads=1)) as reference:
        for raw in bodies[:8]:
            body = {**json.loads(raw), "exclude_ids": [1_000_000]}
            answer = reference.post("/v1/retrieve", json=body).json()
            assert len(answer["ids"]) == 20 == len(set(answer["ids"]))
            assert 1_000_000 not in answer["ids"]
            assert answer["scores"] == sorted(answer["scores"], reverse=True)
            assert answer["ids"] == ebr.post("/v1/retrieve", json=body).json()["ids"]
        bad = reference.post("/v1/retrieve", json={"features": {"region": -1}, "k": 5})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "features", "region"]


def test_the_bare_app_gives_ebr_answers_to_the_bench_payloads(bundle: Path, ebr: TestClient, tmp_path: Path) -> None:
    _, bodies = write_payloads(tmp_path, read_manifest(bundle), k=20)
    with TestClient(bare_app(bundle, threads=1)) as bare:
        assert bare.get("/readyz").json() == {"status": "ready", "snapshot": "20260101T000000Z"}
        for raw in bodies[:8]:
            answer = bare.post("/v1/retrieve", content=raw).json()
            assert len(answer["ids"]) == 20
            assert answer == ebr.post("/v1/retrieve", content=raw, headers={"Content-Type": "application/json"}).json()


def test_the_floor_answers_every_request_with_the_same_bytes() -> None:
    with TestClient(floor_app(k=10)) as client:
        first = client.post("/v1/retrieve", content=b'{"features": {}}', headers={"Content-Type": "application/json"})
        assert first.status_code == 200 and len(first.json()["ids"]) == 10
        assert client.get("/readyz").content == first.content


def test_the_wrk_script_cycles_through_the_written_payloads(bundle: Path, tmp_path: Path) -> None:
    script, bodies = write_payloads(tmp_path, read_manifest(bundle), k=100)
    assert str(tmp_path / "payloads.jsonl") in script.read_text()
    lines = (tmp_path / "payloads.jsonl").read_bytes().splitlines()
    assert lines == bodies and all(json.loads(line)["k"] == 100 for line in lines)


def test_without_wrk_the_bench_says_how_to_install_it(tmp_path: Path) -> None:
    ebr = Path(sys.executable).parent / "ebr"
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run([str(ebr), "bench", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "apt-get install -y wrk" in done.stderr


@needs_wrk
def test_bench_serve_compares_ebr_with_the_reference_and_the_floor(tmp_path: Path) -> None:
    small = ("--candidates", "20000", "--seconds", "2", "--light-seconds", "1", "--rounds", "2")
    out = run_bench("serve", *small, "--cache", str(tmp_path))
    assert re.search(r"round 1/2: reference, ebr, bare, floor\n.*round 2/2: floor, bare, ebr, reference", out, re.S), (
        out
    )
    per_round = re.search(r"throughput per round: ([\d.]+)x, ([\d.]+)x\n", out)
    assert per_round, out
    median = re.search(r"ebr / reference: throughput ([\d.]+)x \(median of rounds\)", out)
    assert median, out
    assert abs(float(median.group(1)) - sum(map(float, per_round.groups())) / 2) < 0.01, out
    apps = r"^\s*(reference|ebr|bare|floor)\s+(\d.*)$"
    rows = {m.group(1): m.group(2).split() for m in re.finditer(apps, out, re.M)}
    assert set(rows) == {"reference", "ebr", "bare", "floor"}, out
    assert all(float(row[1]) > 0 and row[5] == "0" for row in rows.values()), out  # req/s, errors
    server_cpu, machine_cpu = ({app: float(row[col]) for app, row in rows.items()} for col in (8, 9))
    assert all(0 < server_cpu[app] < machine_cpu[app] for app in rows), out
    assert server_cpu["floor"] < server_cpu["bare"] and server_cpu["floor"] < server_cpu["ebr"], out
    budget = re.search(
        r"4x the reference leaves ebr (\d+) us of the machine; ebr used (\d+), bare (\d+), of which the HTTP floor", out
    )
    assert budget, out
    assert abs(int(budget.group(1)) - machine_cpu["reference"] / 4) <= 1 and int(budget.group(2)) == round(
        machine_cpu["ebr"]
    ), out
    assert int(budget.group(3)) == round(machine_cpu["bare"]), out
    assert re.search(r"bare / reference: throughput [\d.]+x .*; ebr reaches [\d.]+ of it", out), out
    assert re.search(r"the index alone: \d+ us per query", out), out
    assert re.search(r"agree on 1[0-6]/16 sampled answers", out), out
    assert bench_servers() == []
