"""`ebr train` and `ebr demo`. Torch is imported inside the commands, so the service install never needs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def train_command(
    out: Annotated[Path, typer.Option(help="run directory: config, metrics and the export")],
    epochs: Annotated[int, typer.Option()] = 4,
    dim: Annotated[int, typer.Option()] = 64,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train the towers on the synthetic dataset and write an export for `ebr build-index`."""
    from export.pipeline import run_export
    from export.synthetic import SyntheticConfig, generate
    from export.train import TrainConfig

    config = TrainConfig(epochs=epochs, dim=dim, seed=seed)
    result = run_export(generate(SyntheticConfig(seed=seed)), config, out / "export")
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    typer.echo(f"export in {result.root}: {json.dumps(result.metrics)}")


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
    app.command("demo")(demo_command)
