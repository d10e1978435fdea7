"""`ebr build-index`, `ebr publish`, `ebr store gc|push|pull` and `ebr bench index`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import redis
import typer

from index.build import Device
from index.bundle import SnapshotError, read_manifest
from index.export_dir import read_export
from index.publish import DEFAULT_PREFIX, REPLICA_STALE_AFTER_S, PublishError, publish
from index.retention import collect_garbage, protected_versions
from index.snapshot import build_snapshot
from index.store import LocalStore

if TYPE_CHECKING:
    from index.remote import ObjectStore

StoreOption = Annotated[Path, typer.Option(envvar="EBR_STORE", help="local snapshot store directory")]
RedisOption = Annotated[str | None, typer.Option(envvar="EBR_REDIS_URL", help="Redis to signal")]
PrefixOption = Annotated[str, typer.Option(envvar="EBR_REDIS_PREFIX")]
RemoteOption = Annotated[
    str | None, typer.Option(envvar="EBR_REMOTE_STORE", help="object store URL, e.g. s3://bucket/snapshots")
]
EndpointOption = Annotated[
    str | None, typer.Option(envvar="EBR_S3_ENDPOINT_URL", help="S3-compatible endpoint (default: AWS)")
]


def build_index_command(
    export: Annotated[Path, typer.Option(help="export directory written by `ebr train`")],
    store: StoreOption = Path(".ebr/store"),
    version: Annotated[str | None, typer.Option(help="snapshot version (default: UTC timestamp)")] = None,
    factory: Annotated[str | None, typer.Option(help="FAISS factory string (default: chosen by size)")] = None,
    k: Annotated[int, typer.Option(help="K for the recall report and tuning")] = 100,
    target_recall: Annotated[float, typer.Option(help="recall@K the search defaults must reach")] = 0.95,
    device: Annotated[str, typer.Option(help="where k-means runs: auto (a GPU if any), cpu or cuda")] = "auto",
) -> None:
    """Build an IVF-PQ index from an export and write a snapshot bundle into the store."""
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("use auto, cpu or cuda", param_hint="--device")
    chosen: Device = device  # type: ignore[assignment]
    path = build_snapshot(read_export(export), LocalStore(store), version, k, target_recall, factory, device=chosen)
    manifest = read_manifest(path)
    report = manifest.build_report
    typer.echo(
        f"wrote {path} ({manifest.index_factory}, nprobe={manifest.search_defaults.nprobe}, "
        f"refine={manifest.search_defaults.refine_factor:g}): recall@{report.k}={report.recall_at_k:.4f} "
        f"on {report.queries} queries, built in {report.build_seconds:.1f}s on {report.device}"
    )


def publish_command(
    version: Annotated[str, typer.Argument(help="version in the store to publish")],
    store: StoreOption = Path(".ebr/store"),
    redis_url: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
    force: Annotated[bool, typer.Option(help="publish even if not newer than the current version")] = False,
    remote: RemoteOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Verify a bundle, then point serving at it (local CURRENT, then the Redis key and event).

    With --remote the bundle is uploaded to the object store first and the pointer names it there.
    """
    client = redis.Redis.from_url(redis_url) if redis_url else None
    target = _object_store(remote, endpoint_url) if remote else None
    try:
        pointer = publish(LocalStore(store), version, client, prefix, force, remote=target)
    except PublishError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"published {pointer.version} ({pointer.uri})")


def gc_command(
    keep: Annotated[int, typer.Option(min=1, help="newest versions to keep besides the protected ones")] = 5,
    pin: Annotated[list[str] | None, typer.Option(help="a version never to delete (repeatable)")] = None,
    store: StoreOption = Path(".ebr/store"),
    redis_url: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
    remote: RemoteOption = None,
    endpoint_url: EndpointOption = None,
    staging_age: Annotated[float, typer.Option(help="seconds before an abandoned staging area is removed")] = 3600.0,
    replica_stale_after: Annotated[
        float, typer.Option(help="seconds without a report after which a replica's version is not protected")
    ] = REPLICA_STALE_AFTER_S,
) -> None:
    """Delete old versions (never the serving, previous, pinned or a live replica's) and stale staging areas."""
    client = redis.Redis.from_url(redis_url) if redis_url else None
    local = LocalStore(store)
    protected = protected_versions(local, client, prefix, pin or (), replica_stale_after)
    target = _object_store(remote, endpoint_url) if remote else local
    collected = collect_garbage(target, keep, protected, staging_age)
    typer.echo(
        f"removed {len(collected.removed)} version(s) {collected.removed}, {len(collected.staging)} staging "
        f"area(s); protected {sorted(collected.protected)}"
    )


def push_command(
    version: Annotated[str, typer.Argument(help="version in the local store to upload")],
    remote: Annotated[str, typer.Option(envvar="EBR_REMOTE_STORE", help="object store URL")],
    store: StoreOption = Path(".ebr/store"),
    endpoint_url: EndpointOption = None,
) -> None:
    """Upload a verified bundle to the object store, manifest last."""
    try:
        uri = _object_store(remote, endpoint_url).push(LocalStore(store).path(version))
    except SnapshotError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"pushed {uri}")


def pull_command(
    version: Annotated[str, typer.Argument(help="version in the object store to fetch")],
    remote: Annotated[str, typer.Option(envvar="EBR_REMOTE_STORE", help="object store URL")],
    cache: Annotated[Path, typer.Option(help="local directory to fetch into")] = Path(".ebr/cache"),
    endpoint_url: EndpointOption = None,
) -> None:
    """Fetch a version into a local directory and verify it there."""
    try:
        path = _object_store(remote, endpoint_url).fetch(version, cache)
    except SnapshotError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"fetched {path}")


def bench_index_command(
    num: Annotated[int, typer.Option(help="candidate embeddings")] = 1_000_000,
    dim: Annotated[int, typer.Option(help="embedding dimension")] = 64,
    queries: Annotated[int, typer.Option(help="unseen queries for recall and throughput")] = 1000,
    threads: Annotated[int, typer.Option(help="FAISS (OpenMP) threads")] = 2,
    k: Annotated[int, typer.Option(help="K of recall@K")] = 100,
    spread: Annotated[float, typer.Option(help="mixture width: noise norm relative to a topic centre's")] = 1.0,
    seed: int = 0,
) -> None:
    """Build from synthetic clustered embeddings; print build time, recall, bundle size and throughput vs flat."""
    from index.bench import omp_warning, run_index_bench

    warning = omp_warning()
    if warning:
        typer.echo(warning, err=True)
    result = run_index_bench(num=num, dim=dim, queries=queries, threads=threads, k=k, spread=spread, seed=seed)
    for line in result.lines(k):
        typer.echo(line)
    typer.echo(
        f"reproduce       OMP_WAIT_POLICY=PASSIVE ebr bench index --num {num} --dim {dim} --queries {queries} "
        f"--threads {threads} --k {k} --spread {spread:g} --seed {seed}"
    )


def _object_store(url: str, endpoint_url: str | None) -> ObjectStore:
    from index.remote import ObjectStore

    options: dict[str, Any] = {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
    return ObjectStore(url, options)


BENCH_HELP = "Benchmarks: each prints its figures and the command that reproduces them."


def command_group(app: typer.Typer, name: str, help_text: str) -> typer.Typer:
    """The app's sub-command group `name`, made here unless another stage registered it already."""
    for group in app.registered_groups:
        if group.name == name and group.typer_instance is not None:
            return group.typer_instance
    sub = typer.Typer(help=help_text, no_args_is_help=True)
    app.add_typer(sub, name=name)
    return sub


def register(app: typer.Typer) -> None:
    app.command("build-index")(build_index_command)
    app.command("publish")(publish_command)
    store = command_group(app, "store", "The snapshot store: retention, upload to and fetch from object storage.")
    store.command("gc")(gc_command)
    store.command("push")(push_command)
    store.command("pull")(pull_command)
    bench = command_group(app, "bench", BENCH_HELP)
    bench.command("index")(bench_index_command)
