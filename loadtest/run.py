"""`python -m loadtest.run`: build a store of several versions, serve it on loopback, run locust, stop.

The store is built from an export (by default the demo's), one `build_snapshot` per version, and kept for
the next run; its pointer is reset to the oldest version first, so a swap run always has newer ones to
publish. The server polls the store's CURRENT every second (no Redis), so swaps land within the run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from index.export_dir import read_export
from index.publish import publish
from index.snapshot import build_snapshot
from index.store import LocalStore
from loadtest.scenarios import SCENARIOS
from service.bench_serve import free_port, stop_server, wait_ready

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
BIN = Path(sys.executable).parent


def prepare_store(export: Path, store: LocalStore, versions: int) -> list[str]:
    """Build versions of `export` until the store holds `versions`, then point it at the oldest."""
    if not export.is_dir():
        raise SystemExit(f"no export at {export}: run `ebr demo` first (it writes .ebr/demo-export)")
    if len(store.versions()) < versions:
        built = read_export(export)
        while len(store.versions()) < versions:
            path = build_snapshot(built, store)
            print(f"built {path.name} in {store.root}", flush=True)
    held = store.versions()
    publish(store, held[0], force=True)
    return held


def start_server(store: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBR_")}
    env |= {
        "EBR_STORE": str(store),
        "EBR_HOST": "127.0.0.1",
        "EBR_PORT": str(port),
        "EBR_DEVICE": "cpu",
        "EBR_POLL_INTERVAL_S": "1",
        "EBR_LOG_LEVEL": "warning",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    with log.open("wb") as handle:
        return subprocess.Popen(
            [str(BIN / "ebr"), "serve"], env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="swap")
    parser.add_argument("--seconds", type=float, default=25.0, help="length of the locust run")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--user-rate", type=float, default=20.0)
    parser.add_argument("--export", type=Path, default=Path(".ebr/demo-export"))
    parser.add_argument("--store", type=Path, default=Path(".ebr/loadtest/store"))
    parser.add_argument("--versions", type=int, default=3, help="versions the store holds (swap publishes all)")
    parser.add_argument("--out", type=Path, default=Path(".ebr/loadtest/results"), help="CSV output folder")
    parser.add_argument("locust_args", nargs="*", help="more locust options, after --")
    args = parser.parse_args(argv)

    store = LocalStore(args.store)
    held = prepare_store(args.export, store, args.versions)
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args.store, port, args.out / "server.log")
    try:
        wait_ready(server, url, args.out / "server.log")
        swap_every = max(1.0, args.seconds / len(held))
        command = [
            str(BIN / "locust"),
            *("-f", str(LOCUSTFILE), "--headless", "--only-summary", "-H", url),
            *("--csv", str(args.out / args.scenario), "--loglevel", "WARNING"),
            *("--scenario", args.scenario, "--scenario-seconds", str(args.seconds)),
            *("--scenario-users", str(args.users), "--user-rate", str(args.user_rate)),
            *("--store", str(args.store), "--swap-every", f"{swap_every:.1f}"),
            *args.locust_args,
        ]
        code = subprocess.run(command, check=False).returncode
    finally:
        stop_server(server)
    print(f"locust exited with {code}; CSV files in {args.out}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
