"""Where a recommendation's CPU goes: each process's CPU time per request, under concurrent clients (8 by default).

    (unset DATABASE_URL; OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.serving_cpu [--strategy fusion]
        [--requests 600] [--clients 8] [--autoscaling])

Starts serve_config.yaml (with `--autoscaling`, a copy in which every model deployment autoscales, 1 to 2
replicas, instead of its fixed replica count) and the no-op app of benchmarks/noop_app.py on one Serve instance,
sends `--requests` cold requests (one new user each) with `--clients` clients to the real app, then as many to the
no-op app making five parallel calls, and reads every process's CPU time from /proc before and after each
phase. On a machine whose cores the whole app shares, CPU per request is what bounds throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from benchmarks.serving_latency import config_copy
from pipelines import serving
from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import get_settings

def cpu_seconds() -> dict[tuple[int, str], float]:
    """(pid, command line) -> user + system CPU seconds, for every process we can read."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()[:60]
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[(int(pid), command)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def drive(url: str, bodies: list[dict], clients: int) -> tuple[float, float, dict[tuple[int, str], float]]:
    """(requests per second, p50 ms, CPU seconds per process) for `bodies` sent by `clients` threads."""
    sessions = [requests.Session() for _ in range(clients)]

    def send(n: int) -> float:
        started = time.perf_counter()
        sessions[n % clients].post(url, json=bodies[n], timeout=30).raise_for_status()
        return (time.perf_counter() - started) * 1000

    before, started = cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(send, range(len(bodies))))
    wall, after = time.perf_counter() - started, cpu_seconds()
    used = {key: after[key] - before.get(key, 0.0) for key in after}
    return len(bodies) / wall, statistics.median(latencies), used


def report(name: str, clients: int, rate: float, p50: float, used: dict[tuple[int, str], float], count: int) -> None:
    print(f"\n{name}: {rate:.1f} requests/s, p50 {p50:.1f} ms, {clients} clients\n")
    print("| process | CPU ms per request |\n|---|---:|")
    for (pid, command), seconds in sorted(used.items(), key=lambda kv: -kv[1])[:12]:
        if seconds > 0:
            print(f"| {command} ({pid}) | {seconds / count * 1000:.1f} |")


def autoscaling(config: dict) -> None:
    """The edit that replaces each model deployment's fixed replica count with autoscaling."""
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] != "Ingress":
            deployment.pop("num_replicas", None)
            deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=["cascade", "fusion"], default="fusion")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--autoscaling", action="store_true", help="every model deployment autoscales")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    settings = get_settings()
    users = EventStore(Database.from_settings(settings)).events_frame()["user_id"].dropna().unique()
    if len(users) < 30 + 2 * args.requests:
        raise SystemExit(f"need {30 + 2 * args.requests} users; {settings.namespace} has {len(users)}")
    bodies = [{"user_id": str(u), "k": 10, "strategy": args.strategy} for u in users]

    scratch = tempfile.TemporaryDirectory()
    try:
        config = config_copy(Path(scratch.name), autoscaling if args.autoscaling else None)
        serving.start(settings, config, http_port=args.port)
        base = f"http://127.0.0.1:{args.port}"
        for body in bodies[:30]:  # warm connections and replicas
            requests.post(f"{base}/v1/recommend", json=body, timeout=30)
            requests.post(f"{base}/noop/v1/recommend?calls=5&parallel=true", json=body, timeout=30)
        real = bodies[30 : 30 + args.requests]
        report(f"recserve, {args.strategy}", args.clients, *drive(f"{base}/v1/recommend", real, args.clients), len(real))
        noop = bodies[30 + args.requests : 30 + 2 * args.requests]
        noop_url = f"{base}/noop/v1/recommend?calls=5&parallel=true"
        report("no-op app, 5 parallel calls", args.clients, *drive(noop_url, noop, args.clients), len(noop))
    finally:
        serving.stop()
        scratch.cleanup()


if __name__ == "__main__":
    main()
