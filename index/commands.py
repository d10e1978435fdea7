"""`ebr build-index` and `ebr publish`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import redis
import typer

from index.bundle import read_manifest
from index.export_dir import read_export
from index.publish import DEFAULT_PREFIX, PublishError, publish
from index.snapshot import build_snapshot
from index.store import LocalStore


def build_index_command(
    export: Annotated[Path, typer.Option(help="export directory written by `ebr train`")],
    store: Annotated[Path, typer.Option(envvar="EBR_STORE", help="snapshot store directory")] = Path(".ebr/store"),
    version: Annotated[str | None, typer.Option(help="snapshot version (default: UTC timestamp)")] = None,
    factory: Annotated[str | None, typer.Option(help="FAISS factory string (default: chosen by size)")] = None,
    k: Annotated[int, typer.Option(help="K for the recall report and tuning")] = 100,
    target_recall: Annotated[float, typer.Option(help="recall@K the search defaults must reach")] = 0.95,
) -> None:
    """Build an IVF-PQ index from an export and write a snapshot bundle into the store."""
    path = build_snapshot(read_export(export), LocalStore(store), version, k, target_recall, factory)
    manifest = read_manifest(path)
    report = manifest.build_report
    typer.echo(
        f"wrote {path} ({manifest.index_factory}, nprobe={manifest.search_defaults.nprobe}, "
        f"refine={manifest.search_defaults.refine_factor:g}): recall@{report.k}={report.recall_at_k:.4f} "
        f"on {report.queries} queries, built in {report.build_seconds:.1f}s"
    )


def publish_command(
    version: Annotated[str, typer.Argument(help="version in the store to publish")],
    store: Annotated[Path, typer.Option(envvar="EBR_STORE", help="snapshot store directory")] = Path(".ebr/store"),
    redis_url: Annotated[str | None, typer.Option(envvar="EBR_REDIS_URL", help="Redis to signal")] = None,
    prefix: Annotated[str, typer.Option(envvar="EBR_REDIS_PREFIX")] = DEFAULT_PREFIX,
    force: Annotated[bool, typer.Option(help="publish even if not newer than the current version")] = False,
) -> None:
    """Verify a bundle, then point serving at it (local CURRENT, then the Redis key and event)."""
    client = redis.Redis.from_url(redis_url) if redis_url else None
    try:
        pointer = publish(LocalStore(store), version, client, prefix, force)
    except PublishError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"published {pointer.version} ({pointer.uri})")


def register(app: typer.Typer) -> None:
    app.command("build-index")(build_index_command)
    app.command("publish")(publish_command)
