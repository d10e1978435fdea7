"""Per-phase figures (requests/s, p50, p99, failures) and the pass/fail verdict against the thresholds."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class PhaseStats:
    name: str
    users: int
    started: float
    ended: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def row(self, now: float) -> dict[str, object]:
        seconds = max(1e-9, (self.ended or now) - self.started)
        p50, p99 = np.percentile(self.latencies_ms, [50, 99]) if self.latencies_ms else (float("nan"),) * 2
        return {
            "phase": self.name,
            "users": self.users,
            "requests": self.requests,
            "rps": round(self.requests / seconds, 1),
            "p50_ms": round(float(p50), 2),
            "p99_ms": round(float(p99), 2),
            "failures": self.failures,
        }


def format_table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "(no phases ran)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.rjust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).rjust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def verdict(fail_ratio: float, p99_ms: float, max_fail_ratio: float, max_p99_ms: float) -> list[str]:
    """The thresholds the run broke; empty when it passed."""
    broken = []
    if fail_ratio > max_fail_ratio:
        broken.append(f"failure ratio {fail_ratio:.4f} > {max_fail_ratio:.4f}")
    if p99_ms > max_p99_ms:
        broken.append(f"p99 {p99_ms:.1f} ms > {max_p99_ms:.1f} ms")
    return broken
