"""Locust scenarios for `POST /v1/retrieve`: steady, step (capacity search), spike and swap-under-load.

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8000 --scenario steady --csv out/run

Payloads are random but valid: each user reads the serving snapshot's feature spec from `GET /v1/snapshot`
when it starts. Every answer is checked (200, unique ids, excluded ids absent, scores descending). The exit
code is 1 when the failure ratio or the p99 passes its threshold, or when a swap run never saw an answer
from the last snapshot it published. `python -m loadtest.run` starts a server and runs this file for you.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
import numpy as np
from locust import FastHttpUser, LoadTestShape, constant_throughput, events, task
from locust.env import Environment

from index.manifest import FeatureSpec
from loadtest.report import PhaseStats, format_table, verdict, write_csv
from loadtest.scenarios import SCENARIOS, Phase, phase_at, phases
from service.payloads import random_features

RETRIEVE = "/v1/retrieve"


class Recorder:
    """What the run saw, per phase, plus the snapshot versions that answered and the ones published."""

    def __init__(self) -> None:
        self.phases: list[PhaseStats] = []
        self.versions: Counter[str] = Counter()
        self.published: list[str] = []
        self.stopping = False

    def enter(self, phase: Phase) -> None:
        now = time.monotonic()
        if self.phases:
            self.phases[-1].ended = now
        self.phases.append(PhaseStats(phase.name, phase.users, now))

    def rows(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [p.row(now) for p in self.phases]


recorder = Recorder()
seeds = itertools.count()


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("ebr")
    group.add_argument("--scenario", choices=SCENARIOS, default="steady", help="load shape")
    group.add_argument("--scenario-seconds", type=float, default=25.0, help="length of the whole run")
    group.add_argument("--scenario-users", type=int, default=20, help="the steady user count")
    group.add_argument("--user-rate", type=float, default=20.0, help="requests/s each user sends")
    group.add_argument("--k", type=int, default=100, help="k of every request")
    group.add_argument("--max-fail-ratio", type=float, default=0.01, help="exit 1 above this failure ratio")
    group.add_argument("--max-p99-ms", type=float, default=250.0, help="exit 1 above this p99")
    group.add_argument("--store", default=".ebr/store", help="swap: store holding the versions to publish")
    group.add_argument("--redis-url", default=None, help="swap: Redis to signal (default: local CURRENT only)")
    group.add_argument("--redis-prefix", default="ebr:snapshot")
    group.add_argument("--swap-every", type=float, default=5.0, help="swap: seconds between publications")


class RetrieveUser(FastHttpUser):
    connection_timeout = 5.0
    network_timeout = 5.0

    def wait_time(self) -> float:
        return float(constant_throughput(self.environment.parsed_options.user_rate)(self))

    def on_start(self) -> None:
        self.rng = np.random.default_rng(next(seeds))
        self.k = self.environment.parsed_options.k
        with self.client.get("/v1/snapshot", name="/v1/snapshot", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"no snapshot serves: {response.status_code}")
                raise RuntimeError("the server serves no snapshot")
            self.spec = FeatureSpec.model_validate(response.json()["feature_spec"])

    @task
    def retrieve(self) -> None:
        features = random_features(self.spec, self.rng)
        # Excluding what the user already saw is what callers do; it exercises the over-fetch path.
        history = next((v for v in features.values() if isinstance(v, list)), [])
        body = {"features": features, "k": self.k, "exclude_ids": history[:2]}
        with self.client.post(RETRIEVE, json=body, name=RETRIEVE, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {(response.text or '')[:200]}")
                return
            problem = check_answer(response.json(), set(body["exclude_ids"]))
            if problem:
                response.failure(problem)
                return
            recorder.versions[response.headers.get("x-snapshot-version") or "?"] += 1


def check_answer(answer: dict[str, Any], excluded: set[int]) -> str | None:
    ids, scores = answer.get("ids", []), answer.get("scores", [])
    if len(set(ids)) != len(ids):
        return "duplicate ids"
    if excluded & set(ids):
        return "an excluded id came back"
    if any(a < b for a, b in itertools.pairwise(scores)):
        return "scores do not descend"
    return None


class ScenarioShape(LoadTestShape):
    """Runs the phases of `--scenario`; stops the run after the last one."""

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None and self.runner.environment.parsed_options is not None
        options = self.runner.environment.parsed_options
        plan = phases(options.scenario, options.scenario_users, options.scenario_seconds)
        current = phase_at(plan, self.get_run_time())
        if current is None:
            return None
        n, phase = current
        if len(recorder.phases) <= n:
            recorder.enter(phase)
        return phase.users, phase.spawn_rate


@events.request.add_listener
def on_request(name: str, response_time: float, exception: BaseException | None, **_: Any) -> None:
    if name != RETRIEVE or not recorder.phases:
        return
    phase = recorder.phases[-1]
    phase.latencies_ms.append(response_time)
    if exception is not None:
        phase.failures += 1


@events.test_start.add_listener
def start_swaps(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or options.scenario != "swap":
        return
    from loadtest.swap import publish_in_turn

    def publish_logged(version: str) -> None:
        recorder.published.append(version)
        print(f"published {version}", flush=True)

    gevent.spawn(
        publish_in_turn,
        Path(options.store),
        options.redis_url,
        options.redis_prefix,
        options.swap_every,
        publish_logged,
        lambda: recorder.stopping,
    )


@events.quitting.add_listener
def judge(environment: Environment, **_: Any) -> None:
    recorder.stopping = True
    options = environment.parsed_options
    assert options is not None
    rows = recorder.rows()
    print(format_table(rows), flush=True)
    if options.csv_prefix:
        write_csv(Path(f"{options.csv_prefix}_phases.csv"), rows)
    print(f"answered by: {dict(recorder.versions)}", flush=True)
    total = environment.stats.total
    broken = verdict(
        total.fail_ratio, total.get_response_time_percentile(0.99) or 0.0, options.max_fail_ratio, options.max_p99_ms
    )
    if options.scenario == "swap":
        if not recorder.published:
            broken.append("swap: the store held no version newer than the serving one, so nothing was published")
        elif recorder.versions[recorder.published[-1]] == 0:
            broken.append(f"swap: no answer came from {recorder.published[-1]}, the last version published")
    for problem in broken:
        print(f"FAILED: {problem}", flush=True)
    environment.process_exit_code = 1 if broken else 0
