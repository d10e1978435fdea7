from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from index.bundle import verify_files
from index.commands import register
from index.export_dir import Export
from index.store import LocalStore


def app() -> typer.Typer:
    cli = typer.Typer()
    register(cli)
    return cli


def test_build_index_writes_a_verified_bundle_and_reports_it(export: Export, tmp_path: Path) -> None:
    store = tmp_path / "store"
    args = ["build-index", "--export", str(export.root), "--store", str(store), "--version", "v1", "--device", "cpu"]
    result = CliRunner().invoke(app(), args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "recall@100=" in result.output and "on cpu" in result.output
    manifest = verify_files(LocalStore(store).path("v1"))
    assert manifest.build_report.recall_at_k >= 0.95


def test_build_index_refuses_an_unknown_device(export: Export, tmp_path: Path) -> None:
    result = CliRunner().invoke(app(), ["build-index", "--export", str(export.root), "--device", "tpu"])
    assert result.exit_code == 2 and "use auto, cpu or cuda" in result.output


def test_push_and_pull_through_a_file_url(built_bundle: Path, tmp_path: Path) -> None:
    remote = f"file://{tmp_path}/remote"
    store = built_bundle.parent
    runner = CliRunner()
    pushed = runner.invoke(app(), ["store", "push", built_bundle.name, "--remote", remote, "--store", str(store)])
    assert pushed.exit_code == 0, pushed.output
    cache = tmp_path / "cache"
    pulled = runner.invoke(app(), ["store", "pull", built_bundle.name, "--remote", remote, "--cache", str(cache)])
    assert pulled.exit_code == 0, pulled.output
    assert verify_files(cache / built_bundle.name).version == built_bundle.name
    missing = runner.invoke(app(), ["store", "pull", "20990101T000000Z", "--remote", remote, "--cache", str(cache)])
    assert missing.exit_code == 1 and "not a snapshot" in missing.output


def test_bench_index_prints_its_figures_and_how_to_reproduce_them() -> None:
    result = CliRunner().invoke(app(), ["bench", "index", "--num", "20000", "--dim", "32", "--queries", "200"])
    assert result.exit_code == 0, result.output
    for label in ("build seconds", "recall@100", "bundle MB", "throughput", "exact flat", "reproduce"):
        assert label in result.output
