"""`ebr serve` and `ebr bench serve`."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import typer
import uvicorn

from index.bundle import SnapshotError, read_manifest
from index.commands import BENCH_HELP, command_group
from index.store import LocalStore
from service.bench_serve import bench_serve_command
from service.bench_swap import bench_swap_command
from service.http import HTTP_PROTOCOL
from service.metrics import MULTIPROCESS_DIR
from service.payloads import example_payload
from service.settings import Settings


def curl_example(settings: Settings) -> str | None:
    pointer = LocalStore(settings.store).read_pointer()
    if pointer is None:
        return None
    try:
        spec = read_manifest(LocalStore(settings.store).path(pointer.version)).feature_spec
    except SnapshotError:
        return None
    body = json.dumps(example_payload(spec))
    return f"curl -s http://{settings.host}:{settings.port}/v1/retrieve -H 'Content-Type: application/json' -d '{body}'"


def serve_command() -> None:
    """Serve the published snapshot (settings from EBR_* variables; see README)."""
    settings = Settings()
    example = curl_example(settings)
    if example:
        typer.echo(f"ebr serving on http://{settings.host}:{settings.port}; try:\n  {example}", err=True)
    with multiprocess_metrics(settings.workers):
        uvicorn.run(
            "service.app:app_from_environment",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            access_log=False,
            # ebr reads no client address and names itself in no header: both cost per request under load.
            proxy_headers=False,
            server_header=False,
            http=HTTP_PROTOCOL,
            timeout_graceful_shutdown=30,
        )


@contextmanager
def multiprocess_metrics(workers: int) -> Iterator[None]:
    """Workers share a fresh metrics directory, set before they start so each imports prometheus-client in it."""
    if workers == 1 or os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="ebr-metrics-") as directory:
        os.environ[MULTIPROCESS_DIR] = directory
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR]


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
    bench = command_group(app, "bench", BENCH_HELP)
    bench.command("serve")(bench_serve_command)
    bench.command("swap")(bench_swap_command)
