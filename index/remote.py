"""A snapshot store in object storage (S3-compatible, or anything fsspec opens), and fetching from it.

The protocol is the local store's: a version is a prefix `<url>/<version>/`; its files are uploaded first
and `manifest.json` last, so a prefix without a manifest whose checksums verify is not a snapshot. Object
stores have no rename, so the manifest's arrival is the commit. Serving reads bundles from local paths:
`fetch` copies a version into a local cache directory (staging, verify, rename) and returns its path.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec

from index.bundle import SnapshotError, check_file_names, fsync_path, parse_manifest, rename_into_place, verify_files
from index.manifest import MANIFEST_NAME
from index.store import DELETING_PREFIX, STAGING_PREFIX
from index.versions import check_version, version_key


class ObjectStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def uri(self, version: str) -> str:
        return f"{self.url}/{version}"

    def _key(self, version: str, name: str = "") -> str:
        return f"{self.root}/{version}/{name}".rstrip("/")

    def _prefixes(self) -> list[str]:
        self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"]

    def versions(self) -> list[str]:
        """Committed versions (prefixes with a manifest), oldest first."""
        found = [v for v in self._prefixes() if self.fs.exists(self._key(v, MANIFEST_NAME))]
        return sorted(found, key=version_key)

    def push(self, bundle: Path) -> str:
        """Upload a verified local bundle, manifest last; a version already there must be this very bundle."""
        manifest = verify_files(bundle)
        version = check_version(manifest.version)
        manifest_key = self._key(version, MANIFEST_NAME)
        local_manifest = (bundle / MANIFEST_NAME).read_bytes()
        if self.fs.exists(manifest_key):
            if self.fs.cat_file(manifest_key) != local_manifest:
                raise SnapshotError(f"{self.uri(version)} already holds a different snapshot")
            return self.uri(version)
        self.fs.makedirs(self._key(version), exist_ok=True)
        for name, entry in sorted(manifest.files.items()):
            key = self._key(version, name)
            self.fs.put_file(str(bundle / name), key)
            size = self.fs.size(key)
            if size != entry.size:
                raise SnapshotError(f"{self.uri(version)}: uploaded {name} is {size} bytes, expected {entry.size}")
        self.fs.pipe_file(manifest_key, local_manifest)
        return self.uri(version)

    def fetch(self, version: str, cache: Path) -> Path:
        """`<cache>/<version>/`, verified; downloaded first unless a verified copy is already there."""
        check_version(version)
        final = cache / version
        if final.is_dir():
            try:
                verify_files(final)
                return final
            except SnapshotError:
                hidden = cache / f"{DELETING_PREFIX}{version}"
                shutil.rmtree(hidden, ignore_errors=True)
                final.rename(hidden)
                shutil.rmtree(hidden)
        where = self.uri(version)
        try:
            raw = self.fs.cat_file(self._key(version, MANIFEST_NAME))
        except FileNotFoundError:
            raise SnapshotError(f"{where}: no {MANIFEST_NAME}, so it is not a snapshot") from None
        manifest = parse_manifest(raw, where)
        # Names come from the remote manifest: refuse any that would write outside the cache before writing.
        check_file_names(where, manifest)
        if manifest.version != version:
            raise SnapshotError(f"{where}: manifest is for version {manifest.version}")
        staging = cache / f"{STAGING_PREFIX}{version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            for name in manifest.files:
                try:
                    self.fs.get_file(self._key(version, name), str(staging / name))
                except FileNotFoundError:
                    raise SnapshotError(f"{where}: {name} is missing") from None
            (staging / MANIFEST_NAME).write_bytes(raw)
            verify_files(staging)
            for path in staging.iterdir():
                fsync_path(path)
            rename_into_place(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def retain(self, keep: int, protected: set[str]) -> list[str]:
        """Delete all but the newest `keep` versions, never one in `protected`; each manifest goes first, so a
        version being deleted stops being a snapshot before any of its files disappear."""
        if keep < 1:
            raise ValueError("retention must keep at least one version")
        doomed = [v for v in self.versions()[:-keep] if v not in protected]
        for version in doomed:
            self.fs.rm_file(self._key(version, MANIFEST_NAME))
            self.fs.rm(self._key(version), recursive=True)
        return doomed

    def clean_staging(self, older_than_seconds: float = 3600.0) -> list[str]:
        """Remove prefixes without a manifest (uploads or deletions cut short) untouched for a while."""
        removed = []
        now = time.time()
        for version in self._prefixes():
            if self.fs.exists(self._key(version, MANIFEST_NAME)):
                continue
            files = self.fs.find(self._key(version))
            touched = max((_timestamp(self.fs.modified(f)) for f in files), default=0.0)
            if now - touched > older_than_seconds:
                if files:
                    self.fs.rm(self._key(version), recursive=True)
                removed.append(version)
        return removed


def fetch_uri(uri: str, cache: Path, storage_options: dict[str, Any] | None = None) -> Path:
    """A local, verified bundle for a pointer's URI: a `file://` URI as it is, anything else fetched."""
    if uri.startswith("file://"):
        path = Path(fsspec.core.url_to_fs(uri)[1])
        verify_files(path)
        return path
    store_url, _, version = uri.rstrip("/").rpartition("/")
    return ObjectStore(store_url, storage_options).fetch(version, cache)


def _timestamp(moment: datetime | float) -> float:
    return moment.timestamp() if isinstance(moment, datetime) else float(moment)
