"""`ebr serve`."""

from __future__ import annotations

import json

import typer
import uvicorn

from index.bundle import SnapshotError, read_manifest
from index.store import LocalStore
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
    uvicorn.run(
        "service.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
