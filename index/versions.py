"""Snapshot versions: UTC timestamps that sort in publish order, `-N` when two share a second."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")


def version_key(version: str) -> tuple[str, int]:
    """Order of versions: by text, except that a numeric `-N` suffix compares as a number (…Z-10 > …Z-9)."""
    base, _, suffix = version.rpartition("-")
    if base and suffix.isdigit():
        return base, int(suffix)
    return version, 0


def is_newer(candidate: str, current: str | None) -> bool:
    return current is None or version_key(candidate) > version_key(current)


def new_version(existing: Iterable[str], now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    taken = set(existing)
    if stamp not in taken:
        return stamp
    n = 2
    while f"{stamp}-{n}" in taken:
        n += 1
    return f"{stamp}-{n}"


def check_version(version: str) -> str:
    if not VERSION_PATTERN.match(version) or version.startswith("."):
        raise ValueError(f"invalid snapshot version {version!r}: use letters, digits, '.', '_' and '-'")
    return version
