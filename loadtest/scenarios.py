"""Load scenarios as phases of constant user counts, so every scenario reports the same per-phase table.

A phase holds `users` users for `seconds`, reaching them at `spawn_rate` users per second. Durations are
shares of the run's total, so one `--scenario-seconds` bounds any scenario.
"""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = ("steady", "step", "spike", "swap")


@dataclass(frozen=True)
class Phase:
    name: str
    users: int
    seconds: float
    spawn_rate: float


def phases(scenario: str, users: int, total_seconds: float, steps: int = 5) -> list[Phase]:
    """`users` is the steady level; step climbs to `steps` times it, spike jumps to 5 times it and comes back."""
    if scenario in ("steady", "swap"):
        return [Phase(scenario, users, total_seconds, spawn_rate=users)]
    if scenario == "step":
        # Capacity search: each step adds the same load; the per-phase table shows where p99 and failures turn.
        share = total_seconds / steps
        return [Phase(f"step-{n}", users * n, share, spawn_rate=users * n) for n in range(1, steps + 1)]
    if scenario == "spike":
        # The spike arrives within a second: the micro-batcher's queue bound and deadlines are what is tested.
        base, peak = total_seconds * 0.4, total_seconds * 0.2
        return [
            Phase("base", users, base, spawn_rate=users),
            Phase("spike", users * 5, peak, spawn_rate=users * 5),
            Phase("recover", users, total_seconds - base - peak, spawn_rate=users * 5),
        ]
    raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")


def phase_at(plan: list[Phase], elapsed: float) -> tuple[int, Phase] | None:
    """The phase running `elapsed` seconds into the run, with its position; None once the run is over."""
    end = 0.0
    for n, phase in enumerate(plan):
        end += phase.seconds
        if elapsed < end:
            return n, phase
    return None
