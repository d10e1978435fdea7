"""`ebr bench serve`: ebr beside a straightforward reference, a bare batching app and the HTTP floor, under one load.

The four serve at once on loopback, with the same workers, threads and load, on one synthetic bundle
(cached under `.ebr/bench/`), and are driven one at a time, in turns: each round gives each a light phase
(one connection: the p50 a lone client sees) and a load phase (the throughput, p50 and p99 under
concurrency), in an order that reverses every round. A shared machine's speed drifts by more than the
differences measured (the reference's throughput moved 2x between runs minutes apart), so the ratios are
taken per round, between phases seconds apart, and their median is what the targets judge. Idle servers
cost almost nothing while another is driven. wrk is the load generator because a Python client cannot send
thousands of requests a second on two cores; the bench installs nothing and stops everything it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import faiss
import httpx
import numpy as np
import psutil
import typer

from index.bundle import SnapshotError, open_bundle, read_manifest, verify_files
from index.export_dir import read_export
from index.manifest import Manifest
from index.publish import publish
from index.search import search, search_parameters
from index.snapshot import build_snapshot
from index.store import LocalStore
from service.http import HTTP_PROTOCOL
from service.payloads import random_features
from service.reference import BUNDLE_VARIABLE
from service.settings import Settings

APPS = ("reference", "ebr", "bare", "floor")
WRK_INSTALL = "apt-get update && apt-get install -y wrk"
BIN = Path(sys.executable).parent
PAYLOADS = 512
READY_STREAK = 30
# wrk keeps one Lua state per thread: each formats every request once, then cycles through them.
WRK_SCRIPT = """
local prepared, count, at = {}, 0, 0
init = function(args)
  for body in io.lines("%(payloads)s") do
    count = count + 1
    prepared[count] = wrk.format("POST", "/v1/retrieve", {["Content-Type"] = "application/json"}, body)
  end
  at = math.random(count)
end
request = function()
  at = at %% count + 1
  return prepared[at]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK-JSON {"requests": %%d, "duration_us": %%d, "errors": %%d, '
    .. '"p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Load:
    connections: int
    wrk_threads: int
    seconds: float
    light_seconds: float
    rounds: int


@dataclass(frozen=True)
class Measured:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    server_cpu_us: float = 0.0
    machine_cpu_us: float = 0.0


@dataclass(frozen=True)
class Result:
    """An app's phases over the rounds, in round order, and its workers' memory after the last one."""

    app: str
    loads: list[Measured]
    lights: list[Measured]
    rss_mb: float
    pss_mb: float

    @property
    def load(self) -> Measured:
        return _median(self.loads)

    @property
    def light(self) -> Measured:
        return _median(self.lights)


def _median(phases: list[Measured]) -> Measured:
    return Measured(
        requests_per_s=statistics.median(m.requests_per_s for m in phases),
        p50_ms=statistics.median(m.p50_ms for m in phases),
        p99_ms=statistics.median(m.p99_ms for m in phases),
        errors=sum(m.errors for m in phases),
        requests=sum(m.requests for m in phases),
        server_cpu_us=statistics.median(m.server_cpu_us for m in phases),
        machine_cpu_us=statistics.median(m.machine_cpu_us for m in phases),
    )


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    url: str


def ensure_bundle(cache: Path, candidates: int) -> Path:
    """The published bundle of `candidates` synthetic candidates, built on first use."""
    store = LocalStore(cache / f"candidates-{candidates}" / "store")
    pointer = store.read_pointer()
    if pointer is not None:
        try:
            verify_files(store.path(pointer.version))
            return store.path(pointer.version)
        except SnapshotError:
            pass
    from service.bench_bundle import write_synthetic_export

    started = time.monotonic()
    typer.echo(f"building the {candidates:,}-candidate bench bundle (once; cached in {store.root.parent})")
    export = write_synthetic_export(store.root.parent / "export", candidates)
    shutil.rmtree(store.root, ignore_errors=True)
    bundle = build_snapshot(read_export(export), store, version="20260101T000000Z")
    publish(store, bundle.name, force=True)
    typer.echo(f"built in {time.monotonic() - started:.0f}s")
    return bundle


def write_payloads(folder: Path, manifest: Manifest, k: int) -> tuple[Path, list[bytes]]:
    """Valid random requests, one JSON body a line, and the wrk script that cycles through them."""
    rng = np.random.default_rng(0)
    bodies = [
        json.dumps({"features": random_features(manifest.feature_spec, rng), "k": k}).encode() for _ in range(PAYLOADS)
    ]
    payloads = folder / "payloads.jsonl"
    payloads.write_bytes(b"\n".join(bodies) + b"\n")
    script = folder / "retrieve.lua"
    script.write_text(WRK_SCRIPT % {"payloads": payloads})
    return script, bodies


def server_command(app: str, port: int, workers: int) -> list[str]:
    """ebr as users run it; the reference on uvicorn's defaults; bare and floor on the HTTP set-up of `ebr serve`."""
    if app == "ebr":
        return [str(BIN / "ebr"), "serve"]
    factory = {
        "reference": "service.reference:reference_from_environment",
        "bare": "service.reference:bare_from_environment",
        "floor": "service.reference:floor_app",
    }
    command = [
        *(sys.executable, "-m", "uvicorn", factory[app], "--factory", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", str(workers), "--log-level", "warning", "--no-access-log"),
    ]
    if app in ("bare", "floor"):
        command += ["--http", HTTP_PROTOCOL, "--no-proxy-headers", "--no-server-header"]
    return command


def server_environment(bundle: Path, port: int, workers: int, threads: int) -> dict[str, str]:
    """Every server gets the same pinned threads; OpenMP threads sleep rather than spin between searches.

    Other `EBR_*` settings in the caller's environment (batching, queue, deadline) reach ebr, so their effect
    can be measured; Redis is dropped, as the bench serves its own store on loopback.
    """
    env = {k: v for k, v in os.environ.items() if k != "EBR_REDIS_URL"}
    pinned = str(threads)
    return env | {
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": pinned,
        "OPENBLAS_NUM_THREADS": pinned,
        "MKL_NUM_THREADS": pinned,
        "EBR_THREADS": pinned,
        "EBR_WORKERS": str(workers),
        "EBR_DEVICE": "cpu",
        "EBR_HOST": "127.0.0.1",
        "EBR_PORT": str(port),
        "EBR_LOG_LEVEL": "warning",
        "EBR_STORE": str(bundle.parent),
        BUNDLE_VARIABLE: str(bundle),
    }


def start_server(app: str, bundle: Path, port: int, workers: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            server_command(app, port, workers),
            env=server_environment(bundle, port, workers, threads),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 300.0) -> None:
    """Ready once many fresh connections in a row get a 200: each lands on any worker, and all must be ready."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline and streak < READY_STREAK:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            streak = streak + 1 if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200 else 0
        except httpx.HTTPError:
            streak = 0
        time.sleep(0.25 if streak == 0 else 0.01)
    if streak >= READY_STREAK:
        return
    raise RuntimeError(f"the server was not ready after {timeout:.0f}s:\n{log.read_text()[-4000:]}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (the supervisor and its workers), SIGKILL what lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def worker_memory_mb(process: subprocess.Popen[bytes]) -> tuple[float, float]:
    """Mean resident and proportional set size of the serving processes (the supervisor holds no index).

    PSS splits each shared page among the processes that map it, so memory-mapped index pages shared by
    all workers count once in total, where RSS counts them in every worker.
    """
    root = psutil.Process(process.pid)
    workers = [p for p in root.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())] or [root]
    infos = [p.memory_full_info() for p in workers]
    return float(np.mean([i.rss for i in infos]) / 2**20), float(np.mean([i.pss for i in infos]) / 2**20)


def server_cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """User and system CPU time of a server's supervisor and workers so far."""
    root = psutil.Process(process.pid)
    total = 0.0
    for member in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent not idle: servers, wrk, kernel and anything else."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "steal", 0.0))


def run_load(server: Server, script: Path, connections: int, threads: int, seconds: float) -> Measured:
    """A wrk phase, with the CPU it cost per request: in the server's processes, and on the whole machine."""
    server_before, machine_before = server_cpu_seconds(server.process), machine_busy_seconds()
    measured = run_wrk(server.url, script, connections, threads, seconds)
    server_used = server_cpu_seconds(server.process) - server_before
    machine_used = machine_busy_seconds() - machine_before
    per_request = 1e6 / max(measured.requests, 1)
    return replace(measured, server_cpu_us=server_used * per_request, machine_cpu_us=machine_used * per_request)


def run_wrk(url: str, script: Path, connections: int, threads: int, seconds: float) -> Measured:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), f"{url}/v1/retrieve"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    found = re.search(r"^WRK-JSON (.*)$", done.stdout, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(found.group(1))
    return Measured(
        requests_per_s=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        errors=raw["errors"],
        requests=raw["requests"],
    )


def search_cost_us(bundle: Path, batch: int = 8, seconds: float = 1.0) -> float:
    """Microseconds per query of the bundle's index alone, on its golden queries in small batches, one thread:
    the part of every request's cost that no serving code can remove."""
    opened = open_bundle(bundle, threads=1)
    golden = opened.golden
    if golden is None:
        raise RuntimeError(f"{bundle} has no golden queries to time the search with")
    queries = np.asarray(opened.session.run([opened.manifest.feature_spec.output], golden.inputs)[0], np.float32)
    params = search_parameters(opened.index, opened.manifest.search_defaults)
    k = golden.exact_rows.shape[1]
    faiss.omp_set_num_threads(1)
    searched, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for first in range(0, len(queries) - batch + 1, batch):
            search(opened.index, queries[first : first + batch], k, params)
            searched += batch
    return (time.perf_counter() - started) / max(searched, 1) * 1e6


def sample_answers(url: str, bodies: list[bytes], count: int = 16) -> list[list[int]]:
    headers = {"Content-Type": "application/json"}
    answers = []
    for body in bodies[:count]:
        response = httpx.post(f"{url}/v1/retrieve", content=body, headers=headers, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
        answers.append(response.json()["ids"])
    return answers


@contextmanager
def serving(bundle: Path, workers: int, threads: int, folder: Path) -> Iterator[dict[str, Server]]:
    """All four apps started and ready, each on its own port; all stopped on the way out."""
    servers: dict[str, Server] = {}
    try:
        for app in APPS:
            port = free_port()
            log = folder / f"{app}.log"
            servers[app] = Server(start_server(app, bundle, port, workers, threads, log), f"http://127.0.0.1:{port}")
            wait_ready(servers[app].process, servers[app].url, log)
        yield servers
    finally:
        for server in servers.values():
            stop_server(server.process)


def measure(servers: dict[str, Server], script: Path, load: Load) -> dict[str, Result]:
    """A warm-up as long as a load phase for each, then `load.rounds` rounds of a light and a load phase for
    each, in turns. The reference keeps speeding up over its first several seconds of load (2,640 req/s in
    its first 5 s, 3,640 by its sixth), so a short warm-up flatters whatever is compared with it in round 1."""
    for server in servers.values():
        run_wrk(server.url, script, load.connections, load.wrk_threads, load.seconds)
    loads: dict[str, list[Measured]] = {app: [] for app in servers}
    lights: dict[str, list[Measured]] = {app: [] for app in servers}
    for round_index in range(load.rounds):
        order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
        typer.echo(f"round {round_index + 1}/{load.rounds}: {', '.join(order)}")
        for app in order:
            url = servers[app].url
            lights[app].append(run_wrk(url, script, 1, 1, load.light_seconds))
            loads[app].append(run_load(servers[app], script, load.connections, load.wrk_threads, load.seconds))
    results = {}
    for app, server in servers.items():
        rss, pss = worker_memory_mb(server.process)
        results[app] = Result(app, loads[app], lights[app], rss, pss)
    return results


def throughput_ratios(results: dict[str, Result], app: str = "ebr") -> list[float]:
    """An app's throughput over the reference's, round by round."""
    pairs = zip(results[app].loads, results["reference"].loads, strict=True)
    return [ebr.requests_per_s / ref.requests_per_s for ebr, ref in pairs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def format_results(results: dict[str, Result], workers: int) -> str:
    header = f"{'app':>9}  {'workers':>7}  {'req/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'light p50 ms':>12}"
    header += f"  {'errors':>6}  {'RSS/worker MB':>13}  {'PSS/worker MB':>13}  {'server CPU us/req':>17}"
    header += f"  {'machine CPU us/req':>18}"
    lines = [header]
    for r in results.values():
        lines.append(
            f"{r.app:>9}  {workers:>7}  {r.load.requests_per_s:>8.0f}  {r.load.p50_ms:>7.2f}  {r.load.p99_ms:>7.2f}"
            f"  {r.light.p50_ms:>12.2f}  {r.load.errors + r.light.errors:>6}  {r.rss_mb:>13.0f}  {r.pss_mb:>13.0f}"
            f"  {r.load.server_cpu_us:>17.0f}  {r.load.machine_cpu_us:>18.0f}"
        )
    ebr, ref, bare, floor = results["ebr"], results["reference"], results["bare"], results["floor"]
    ratios = throughput_ratios(results)
    bare_ratio = statistics.median(throughput_ratios(results, "bare"))
    lines += [
        "",
        f"medians over {len(ratios)} round(s); ebr / reference throughput per round: "
        + ", ".join(f"{r:.2f}x" for r in ratios),
        f"ebr / reference: throughput {statistics.median(ratios):.2f}x (median of rounds), "
        f"p50 {ebr.load.p50_ms / ref.load.p50_ms:.2f}x, p99 {ebr.load.p99_ms / ref.load.p99_ms:.2f}x",
        f"ebr / floor: throughput {ebr.load.requests_per_s / floor.load.requests_per_s:.2f} of the HTTP floor",
        f"bare / reference: throughput {bare_ratio:.2f}x (median of rounds), the ceiling of a batching app without "
        f"ebr's checks on this server; ebr reaches {ebr.load.requests_per_s / bare.load.requests_per_s:.2f} of it",
        f"CPU per request under load (median of rounds): 4x the reference leaves ebr "
        f"{ref.load.machine_cpu_us / 4:.0f} us of the machine; ebr used {ebr.load.machine_cpu_us:.0f}, bare "
        f"{bare.load.machine_cpu_us:.0f}, of which the HTTP floor (server and wrk) takes "
        f"{floor.load.machine_cpu_us:.0f}",
    ]
    return "\n".join(lines)


def target_lines(results: dict[str, Result]) -> list[str]:
    ebr = results["ebr"]
    ratio = statistics.median(throughput_ratios(results))
    checks = [
        (f"ebr >= 3,000 req/s: {ebr.load.requests_per_s:,.0f}", ebr.load.requests_per_s >= 3000),
        (f"ebr p99 <= 10 ms under load: {ebr.load.p99_ms:.2f}", ebr.load.p99_ms <= 10),
        (f"ebr >= 4x the reference: {ratio:.2f}x", ratio >= 4),
        (f"ebr p50 <= 1.5 ms at light load: {ebr.light.p50_ms:.2f}", ebr.light.p50_ms <= 1.5),
    ]
    return [f"  {'met   ' if ok else 'MISSED'}  {text}" for text, ok in checks]


def bench_serve_command(
    candidates: Annotated[int, typer.Option(help="candidates in the synthetic bundle")] = 1_000_000,
    workers: Annotated[int, typer.Option(help="server worker processes, the same for all four")] = 2,
    threads: Annotated[int, typer.Option(help="ONNX Runtime, FAISS and OpenMP threads per worker")] = 1,
    connections: Annotated[int, typer.Option(help="wrk connections in the load phase")] = 16,
    wrk_threads: Annotated[int, typer.Option(help="wrk threads")] = 1,
    seconds: Annotated[float, typer.Option(help="length of each load phase")] = 10.0,
    light_seconds: Annotated[float, typer.Option(help="length of each one-connection phase")] = 5.0,
    rounds: Annotated[int, typer.Option(min=1, help="rounds of phases, the apps taking turns in each")] = 3,
    k: Annotated[int, typer.Option(help="k of every request")] = 100,
    cache: Annotated[Path, typer.Option(help="where the synthetic bundle is kept")] = Path(".ebr/bench"),
) -> None:
    """ebr beside a straightforward FastAPI reference, a bare batching app and a do-nothing floor, under one load."""
    if shutil.which("wrk") is None:
        typer.echo(f"ebr bench serve needs wrk, the HTTP load generator; install it with: {WRK_INSTALL}", err=True)
        raise typer.Exit(2)
    bundle = ensure_bundle(cache, candidates)
    manifest = read_manifest(bundle)
    report = manifest.build_report
    typer.echo(
        f"bundle {bundle}: {manifest.num_candidates:,} candidates, {manifest.index_factory}, "
        f"nprobe={manifest.search_defaults.nprobe}, refine={manifest.search_defaults.refine_factor:g}, "
        f"recall@{report.k}={report.recall_at_k:.4f}"
    )
    typer.echo(
        f"load: {rounds} round(s) of wrk -t{wrk_threads} -c{connections} for {seconds:g}s "
        f"(light: -t1 -c1 for {light_seconds:g}s) per app, "
        f"k={k}, {workers} worker(s) x {threads} thread(s), {os.cpu_count()} CPUs shared with wrk"
    )
    typer.echo(f"the index alone: {search_cost_us(bundle):.0f} us per query (batches of 8, one thread, k={report.k})")
    ebr_settings = Settings()
    typer.echo(
        f"ebr batching: max_batch_size={ebr_settings.max_batch_size}, "
        f"max_batch_wait_ms={ebr_settings.max_batch_wait_ms:g} (EBR_MAX_BATCH_* in the environment change them)"
    )
    load = Load(connections, wrk_threads, seconds, light_seconds, rounds)
    with tempfile.TemporaryDirectory(prefix="ebr-bench-") as scratch:
        folder = Path(scratch)
        script, bodies = write_payloads(folder, manifest, k)
        typer.echo("starting the reference, ebr, the bare app and the floor ...")
        with serving(bundle, workers, threads, folder) as servers:
            answers = {app: sample_answers(servers[app].url, bodies) for app in ("ebr", "reference")}
            results = measure(servers, script, load)
    typer.echo("")
    typer.echo(format_results(results, workers))
    agree = sum(a == b for a, b in zip(answers["ebr"], answers["reference"], strict=True))
    typer.echo(f"ebr and the reference agree on {agree}/{len(answers['ebr'])} sampled answers")
    typer.echo("targets:")
    for line in target_lines(results):
        typer.echo(line)
    if any(r.load.errors or r.light.errors for r in results.values()):
        typer.echo("some requests failed, so the figures above do not describe a healthy server", err=True)
        raise typer.Exit(1)
