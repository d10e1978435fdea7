"""`ebr train`, `ebr bench-train` and `ebr demo`. Torch is imported inside the commands, so the service install
never needs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def train_command(
    out: Annotated[Path, typer.Option(help="run directory: config.json, metrics.json and export/")],
    dataset: Annotated[str, typer.Option(help="a named dataset or <format>:<path>")] = "synthetic",
    objective: Annotated[str, typer.Option(help="retrieval or ssmtl")] = "retrieval",
    seed: Annotated[int, typer.Option()] = 0,
    epochs: Annotated[int | None, typer.Option(help="default: the benchmark's set-up for the dataset")] = None,
    dim: Annotated[int | None, typer.Option(help="default: the benchmark's set-up for the dataset")] = None,
    through_index: Annotated[bool, typer.Option(help="also evaluate through an IVF-PQ index")] = False,
    assignments: Annotated[
        list[str] | None,
        typer.Option("--set", help="NAME=VALUE for any training setting, e.g. --set temperature=0.04; repeatable"),
    ] = None,
) -> None:
    """Train the towers, export the user tower and candidate embeddings for `ebr build-index`, evaluate both."""
    import dataclasses

    from export.bench import setup
    from export.datasets import load
    from export.pipeline import run_export
    from export.train import with_overrides

    config = setup(dataset, objective, seed, epochs)
    config = dataclasses.replace(config, dim=dim or config.dim)
    try:
        config = with_overrides(config, assignments or [])
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--set") from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"dataset": dataset, **dataclasses.asdict(config)}, indent=2))
    result = run_export(load(dataset), config, out / "export", through_index=through_index)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    typer.echo(f"export in {result.root}: {json.dumps(result.metrics)}")


def bench_train_command(
    out: Annotated[Path, typer.Option(help="where each run's directory and runs.json go")] = Path("runs/bench"),
    datasets: Annotated[str, typer.Option(help="comma-separated")] = "gowalla,twitch",
    objectives: Annotated[str, typer.Option(help="comma-separated")] = "retrieval,ssmtl",
    seeds: Annotated[str, typer.Option(help="comma-separated")] = "0,1,2",
    epochs: Annotated[int | None, typer.Option(help="override every dataset's epochs")] = None,
    first_seed_only: Annotated[str, typer.Option(help="comma-separated datasets run with the first seed only")] = "",
) -> None:
    """Benchmark the objectives: one table of dataset x objective x seed and SSMTL's gain over retrieval."""
    from export.bench import format_table, run_benchmark
    from export.evaluate import set_faiss_threads

    set_faiss_threads(2)
    benchmark = run_benchmark(
        datasets.split(","),
        objectives.split(","),
        [int(s) for s in seeds.split(",")],
        out,
        epochs=epochs,
        first_seed_only=frozenset(filter(None, first_seed_only.split(","))),
    )
    table = format_table(benchmark)
    (out / "table.txt").write_text(table + "\n")
    typer.echo(table)


def demo_command(
    store: Annotated[Path, typer.Option(envvar="EBR_STORE")] = Path(".ebr/store"),
    work: Annotated[Path, typer.Option(help="where the demo's training export goes")] = Path(".ebr"),
) -> None:
    """Build and publish the demo snapshot unless the store already serves a verified one."""
    from export.demo import ensure_demo
    from index.store import LocalStore

    pointer, built = ensure_demo(LocalStore(store), work)
    typer.echo(f"demo snapshot {pointer.version} {'built' if built else 'already there, reused'}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("bench-train")(bench_train_command)
    app.command("demo")(demo_command)
