"""Progress for long work: a bar on a terminal, plain lines in logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class Tracker(Protocol):
    def advance(self, steps: int = 1, note: str = "") -> None: ...


class _LineTracker:
    def __init__(self, description: str, total: int, every: float) -> None:
        self.description, self.total, self.every = description, total, every
        self.done = 0
        self.started = self.last = time.monotonic()

    def advance(self, steps: int = 1, note: str = "") -> None:
        self.done += steps
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= self.every:
            self.last = now
            print(
                f"{self.description}: {self.done}/{self.total} {note} ({now - self.started:.1f}s)".rstrip(),
                file=sys.stderr,
                flush=True,
            )


class _BarTracker:
    def __init__(self, progress: Progress, task: int, description: str) -> None:
        self.progress, self.task, self.description = progress, task, description

    def advance(self, steps: int = 1, note: str = "") -> None:
        label = f"{self.description} {note}".rstrip()
        self.progress.update(self.task, advance=steps, description=label)  # type: ignore[arg-type]


@contextmanager
def track(description: str, total: int, every: float = 5.0) -> Iterator[Tracker]:
    if not sys.stderr.isatty():
        yield _LineTracker(description, total, every)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield _BarTracker(progress, task, description)
