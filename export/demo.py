"""The demo snapshot that `make run` serves: synthetic data, a short training run, one published bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

from export.pipeline import run_export
from export.synthetic import SyntheticConfig, generate
from export.train import TrainConfig
from index.bundle import SnapshotError, verify_files
from index.export_dir import read_export
from index.publish import publish
from index.snapshot import build_snapshot
from index.store import LocalStore, Pointer


def ensure_demo(store: LocalStore, work: Path, epochs: int = 4) -> tuple[Pointer, bool]:
    """The demo's pointer, building and publishing it first unless a verified one is already there."""
    pointer = store.read_pointer()
    if pointer is not None:
        try:
            verify_files(store.path(pointer.version))
            return pointer, False
        except SnapshotError:
            pass
    started = time.monotonic()
    data = generate(SyntheticConfig())
    result = run_export(data, TrainConfig(epochs=epochs), work / "demo-export")
    bundle = build_snapshot(read_export(result.root), store)
    pointer = publish(store, bundle.name, force=True)
    print(
        f"demo snapshot {pointer.version} built in {time.monotonic() - started:.0f}s: {json.dumps(result.metrics)}",
        flush=True,
    )
    return pointer, True
