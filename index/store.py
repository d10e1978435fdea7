"""The local snapshot store: one directory per version, staging directories, the CURRENT pointer, the publish
history, retention."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from index.manifest import MANIFEST_NAME
from index.versions import version_key

POINTER_NAME = "CURRENT"
HISTORY_NAME = "HISTORY"
STAGING_PREFIX = ".staging-"
DELETING_PREFIX = ".deleting-"


class Pointer(BaseModel):
    """What serves: the JSON of the Redis key `<prefix>:current`, of its events and of `<store>/CURRENT`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: str
    uri: str
    manifest_sha256: str
    published_at: str


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, version: str) -> Path:
        return self.root / version

    def uri(self, version: str) -> str:
        return self.path(version).resolve().as_uri()

    def versions(self) -> list[str]:
        """Committed versions (directories with a manifest), oldest first."""
        if not self.root.is_dir():
            return []
        found = [
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_NAME).is_file()
        ]
        return sorted(found, key=version_key)

    def read_pointer(self) -> Pointer | None:
        try:
            return Pointer.model_validate_json((self.root / POINTER_NAME).read_bytes())
        except FileNotFoundError:
            return None

    def write_pointer(self, pointer: Pointer) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".{POINTER_NAME}.{os.getpid()}.tmp"
        with temporary.open("w") as f:
            f.write(pointer.model_dump_json())
            f.flush()
            os.fsync(f.fileno())
        temporary.replace(self.root / POINTER_NAME)

    def record_published(self, pointer: Pointer) -> None:
        """Append to HISTORY, so that retention knows which version served before the current one."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / HISTORY_NAME).open("a") as f:
            f.write(pointer.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())

    def history(self) -> list[Pointer]:
        """Every pointer published into this store, oldest first; a torn last line is skipped."""
        try:
            lines = (self.root / HISTORY_NAME).read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(Pointer.model_validate_json(line))
            except ValueError:
                continue
        return out

    def clean_staging(self, older_than_seconds: float = 3600.0) -> list[str]:
        """Remove staging directories that no writer has touched for a while, and deletions cut short."""
        removed = []
        now = time.time()
        for p in [*self.root.glob(f"{STAGING_PREFIX}*"), *self.root.glob(f"{DELETING_PREFIX}*")]:
            if p.is_dir() and now - p.stat().st_mtime > older_than_seconds:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed

    def retain(self, keep: int, protected: set[str]) -> list[str]:
        """Delete all but the newest `keep` versions, never one in `protected` (serving, previous, pinned)."""
        if keep < 1:
            raise ValueError("retention must keep at least one version")
        doomed = [v for v in self.versions()[:-keep] if v not in protected]
        for version in doomed:
            # Renamed first, so that no reader ever finds a half-deleted directory under a version's name.
            hidden = self.root / f"{DELETING_PREFIX}{version}"
            self.path(version).rename(hidden)
            shutil.rmtree(hidden)
        return doomed
