"""Changing a bundle the way corruption, a bad build or an attacker would, for the verifier's tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from index.bundle import sha256_of
from index.manifest import MANIFEST_NAME
from index.store import LocalStore


def manifest_document(bundle: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((bundle / MANIFEST_NAME).read_text())
    return document


def write_manifest(bundle: Path, document: dict[str, Any]) -> None:
    (bundle / MANIFEST_NAME).write_text(json.dumps(document, indent=2))


def resign(bundle: Path, **changes: Any) -> None:
    """Apply `changes` to the manifest and recompute every listed file's size and sha256, so that the bundle
    is consistent byte for byte and only the meaning is wrong."""
    document = manifest_document(bundle)
    document.update(changes)
    document["files"] = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_of(p)}
        for p in sorted(bundle.iterdir())
        if p.name != MANIFEST_NAME
    }
    write_manifest(bundle, document)


def copy_version(source: Path, store: LocalStore, version: str) -> Path:
    """A committed copy of a bundle under another version, its manifest saying so and its checksums updated."""
    target = store.path(version)
    shutil.copytree(source, target)
    resign(target, version=version)
    return target
