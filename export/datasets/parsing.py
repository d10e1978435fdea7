"""Reading dataset files line by line, so that a bad file stops with its name, line number and reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


class DatasetError(ValueError):
    pass


def require(path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    return path


def lines(path: Path, header: bool = False, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-empty line; a last line without its newline means the file was cut."""
    text = require(path).read_bytes().decode(encoding, errors="strict" if encoding == "utf-8" else "replace")
    if not text:
        raise DatasetError(f"{path}:1: file is empty")
    rows = text.split("\n")
    if rows[-1] != "":
        raise DatasetError(f"{path}:{len(rows)}: truncated (the last line has no newline)")
    for number, row in enumerate(rows[:-1], start=1):
        if header and number == 1:
            continue
        row = row.rstrip("\r")
        if row.strip():
            yield number, row


def ints(path: Path, number: int, tokens: list[str], count: int | None = None, minimum: int = 0) -> list[int]:
    """The tokens as integers ≥ minimum; `count` fixes how many a line must hold."""
    if count is not None and len(tokens) != count:
        raise DatasetError(f"{path}:{number}: expected {count} fields, got {len(tokens)}")
    try:
        values = [int(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not t.strip().lstrip("-").isdigit())
        raise DatasetError(f"{path}:{number}: expected an integer, got {bad!r}") from None
    low = min(values, default=minimum)
    if low < minimum:
        raise DatasetError(f"{path}:{number}: id {low} is below {minimum}")
    return values


def load_json(path: Path) -> object:
    try:
        return json.loads(require(path).read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}:{error.lineno}: malformed JSON ({error.msg}, column {error.colno})") from None
