"""/v1/recommend latency over HTTP: the real app (ingress -> popularity) next to a no-op app of the
same topology, deployed on the same Serve instance and measured in the same run, interleaved.

    .venv/bin/python -m benchmarks.serving_latency [--namespace demo] [--requests 400]

Needs a loaded namespace with a trained popularity artifact (`make demo` makes one). Sequential:
one request after another. Concurrent: 8 client threads. The ratio real/no-op is the figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from pipelines import serving
from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import get_settings


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def timed_post(session: requests.Session, url: str, body: dict) -> float:
    started = time.perf_counter()
    response = session.post(url, json=body, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed


def run(urls: dict[str, str], bodies: list[dict], clients: int, requests_per_app: int) -> dict[str, list[float]]:
    """Alternate the apps request by request so that machine noise hits both alike."""
    samples: dict[str, list[float]] = {name: [] for name in urls}
    sessions = [requests.Session() for _ in range(clients)]

    def client(worker: int) -> None:
        for n in range(worker, requests_per_app, clients):
            for name, url in urls.items():
                samples[name].append(timed_post(sessions[worker], url, bodies[n % len(bodies)]))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    settings = get_settings()
    if args.namespace:
        settings = settings.model_copy(update={"namespace": args.namespace})
    users = EventStore(Database.from_settings(settings)).events_frame()["user_id"].dropna().unique()[:200]
    bodies = [{"user_id": str(u), "k": 10} for u in users]

    from ray import serve

    from benchmarks.noop_app import noop_app

    serving.start(settings, http_port=args.port)
    try:
        serve.run(noop_app, name="noop", route_prefix="/noop")
        base = f"http://127.0.0.1:{args.port}"
        urls = {"recserve": f"{base}/v1/recommend", "no-op floor": f"{base}/noop/v1/recommend"}
        run(urls, bodies, 1, 50)  # warm-up: connections, replicas, caches
        print(f"/v1/recommend, ingress -> popularity vs. no-op ingress -> 1 deployment; namespace {settings.namespace}; "
              f"{args.requests} requests per app per row, interleaved; 2-core CPU\n")
        print("| clients | app | p50 ms | p99 ms | mean ms | p50 ratio | p99 ratio |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for clients in (1, 8):
            samples = run(urls, bodies, clients, args.requests)
            floor50, floor99 = percentiles(samples["no-op floor"])
            for name, values in samples.items():
                p50, p99 = percentiles(values)
                print(f"| {clients} | {name} | {p50:.1f} | {p99:.1f} | {statistics.mean(values):.1f} | "
                      f"{p50 / floor50:.2f}x | {p99 / floor99:.2f}x |")
    finally:
        serving.stop()


if __name__ == "__main__":
    main()
