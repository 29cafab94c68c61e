"""/v1/recommend latency over HTTP, per strategy (the cascade of serve_config.yaml, and fusion), next to a
no-op app of the same topology (the same number of model calls, one after another for the cascade, at
once for fusion), deployed on the same Serve instance and measured in the same run.

    .venv/bin/python -m benchmarks.serving_latency [--namespace demo] [--requests 400] [--strategies cascade fusion]
        [--cascade lightgcn popularity] [--min-source-weight 0.1] [--clients 1 8] [--schedules interleaved blocks]

`--cascade` replaces the ingress's cascade of serve_config.yaml for the run, e.g. to measure ingress ->
LightGCN alone (LightGCN fills k for every known user, so the cascade makes one model call).
`--min-source-weight` replaces its `fusion_min_source_weight`: how little attention a source may get and
still be asked (a higher one asks fewer sources per fusion request).

Needs a namespace with trained models (`make demo` trains them all, fusion included). Sequential: one
request after another. Concurrent: 8 client threads. The ratio real/no-op is the figure. Two schedules
take the apps in turn, each on its own requests:
- interleaved: request by request, so with 8 clients the two apps' requests share the cores at once, and
  each app's latency also depends on how the other app's processes compete for them;
- blocks: 80 requests to one app, then the same 80 to the other, so each has the cores to itself, as it
  would in production; blocks still alternate, so that machine noise hits both alike.

The ingress caches per user (seen items, whole answers), so each row is measured twice:
- cold: every request is for a user not asked before (result and seen-items caches miss; the
  catalogue snapshot is always in memory, by design);
- warm: the same requests again, answered from the result cache (each is re-sent untimed just before
  it is measured, so that a slow machine cannot outlast the cache's TTL).
The `hits` column is the share of real-app responses that said `cached: true`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import yaml

from benchmarks.noop_app import NOOP_APPLICATION
from deployments.contract import NOT_CALLED_OUTCOMES
from deployments.ingress import IngressConfig
from pipelines import serving
from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import get_settings


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def timed_post(session: requests.Session, url: str, body: dict, flag: str = "cached") -> tuple[float, bool]:
    """(milliseconds, the answer's boolean field `flag`, e.g. whether it came from the result cache)."""
    started = time.perf_counter()
    response = session.post(url, json=body, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, bool(response.json().get(flag, False))


def timed_run(
    urls: dict[str, str], bodies: list[dict], clients: int, prime: str | None = None, flag: str = "cached",
    block: int | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[bool]]]:
    """One request per body and app, sent by `clients` threads, so that machine noise hits the apps alike:
    - `block` None: the apps alternate request by request, so with several clients their requests overlap;
    - `block` n: n bodies go to one app, then the same n to the next, so each app has the cores to itself.
    `prime`: an app sent each body once, untimed, just before (so that its cache holds the answer however
    slow the machine is). Returns latencies and `flag` values per app."""
    samples: dict[str, list[float]] = {name: [] for name in urls}
    cached: dict[str, list[bool]] = {name: [] for name in urls}
    sessions = [requests.Session() for _ in range(clients)]

    def send(chunk: list[dict], names: list[str]) -> None:
        def client(worker: int) -> None:
            for n in range(worker, len(chunk), clients):
                if prime in names:
                    timed_post(sessions[worker], urls[prime], chunk[n], flag)
                for name in names:
                    elapsed, hit = timed_post(sessions[worker], urls[name], chunk[n], flag)
                    samples[name].append(elapsed)
                    cached[name].append(hit)

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))

    if block is None:
        send(bodies, list(urls))
    else:
        for start in range(0, len(bodies), block):
            for name in urls:
                send(bodies[start:start + block], [name])
    return samples, cached


def print_ratio_rows(lead: str, samples: dict[str, list[float]], flags: dict[str, list[bool]]) -> None:
    """One Markdown row per app: p50 / p99 / mean and their ratio to the no-op floor of the same run,
    then the share of recserve's answers that carried the flag."""
    floor50, floor99 = percentiles(samples["no-op floor"])
    for name, values in samples.items():
        p50, p99 = percentiles(values)
        share = f"{statistics.mean(flags[name]):.0%}" if name == "recserve" else ""
        print(f"| {lead} | {name} | {p50:.1f} | {p99:.1f} | {statistics.mean(values):.1f} | "
              f"{p50 / floor50:.2f}x | {p99 / floor99:.2f}x | {share} |", flush=True)


def topology(base: str, bodies: list[dict]) -> tuple[int, bool, dict[str, list[float]]]:
    """(model calls, in parallel?, each stage's latencies) that the real app made for these requests: the
    no-op app repeats the calls. The cascade calls its loaded stages one after another until one fills k
    (the most common count is taken); fusion calls the loaded sources it weighs at once."""
    counts, parallel, stages = [], False, {}
    for body in bodies:
        answer = requests.post(f"{base}/v1/recommend", json=body, timeout=30).json()
        called = [a for a in answer["models_tried"] if a["outcome"] not in NOT_CALLED_OUTCOMES and a["model"] != "fusion"]
        counts.append(max(1, len(called)))
        parallel = answer["strategy"] == "fusion"
        for attempt in answer["models_tried"]:
            if attempt["outcome"] not in NOT_CALLED_OUTCOMES:
                stages.setdefault(f"{attempt['model']} ({attempt['outcome']})", []).append(attempt["latency_ms"])
    return statistics.mode(counts), parallel, stages


MODELS = IngressConfig().cascade
# timed_run's `block` per schedule.
SCHEDULES = {"interleaved": None, "blocks": 80}


def config_copy(folder: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """serve_config.yaml as `edit` changes it, with the no-op app added, written to `folder` for one benchmark run."""
    config = yaml.safe_load(serving.DEFAULT_CONFIG.read_text())
    if edit is not None:
        edit(config)
    config["applications"].append(NOOP_APPLICATION)
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_config_edit(cascade: list[str] | None, min_source_weight: float | None) -> Callable[[dict], None]:
    """The edit that makes the ingress ask `cascade`, in that order, and makes fusion skip the sources
    weighed under `min_source_weight` (None: as serve_config.yaml has them)."""
    def edit(config: dict) -> None:
        app = config["applications"][0]
        if cascade is not None:
            app["args"]["ingress"]["cascade"] = cascade
        if min_source_weight is not None:
            [ingress] = [d for d in app["deployments"] if d["name"] == "Ingress"]
            ingress["user_config"]["fusion_min_source_weight"] = min_source_weight
    return edit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--strategies", nargs="+", choices=["cascade", "fusion"], default=["cascade", "fusion"])
    parser.add_argument("--phases", nargs="+", choices=["cold", "warm"], default=["cold", "warm"])
    parser.add_argument("--cascade", nargs="+", choices=MODELS, help="the ingress's cascade for this run")
    parser.add_argument("--min-source-weight", type=float, help="the ingress's fusion_min_source_weight for this run")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8], help="a row per number of concurrent clients")
    parser.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=list(SCHEDULES),
                        help="how the two apps share the run (see timed_run)")
    args = parser.parse_args()
    settings = get_settings()
    if args.namespace:
        settings = settings.model_copy(update={"namespace": args.namespace})
    warmup, rows = 30, args.clients
    wanted = len(args.strategies) * (warmup + args.requests * len(rows) * len(args.schedules))
    users = EventStore(Database.from_settings(settings)).events_frame()["user_id"].dropna().unique()
    if len(users) < wanted:
        raise SystemExit(f"need {wanted} distinct users (each cold request is a new one); {settings.namespace} has {len(users)}")
    users = iter(users[:wanted])

    scratch = tempfile.TemporaryDirectory()
    try:
        config = config_copy(Path(scratch.name), run_config_edit(args.cascade, args.min_source_weight))
        serving.start(settings, config, http_port=args.port)  # inside: a start that times out still stops Ray
        base = f"http://127.0.0.1:{args.port}"
        print(f"/v1/recommend per strategy (forced with `strategy`) vs. a no-op ingress making the same model calls; "
              f"namespace {settings.namespace}; {args.requests} requests per app per row, k=10, "
              "one distinct user per cold request; warm = the same requests repeated\n")
        print("| strategy | clients | caches | schedule | app | p50 ms | p99 ms | mean ms | p50 ratio | p99 ratio | hits |")
        print("|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
        breakdown: dict[str, dict[str, list[float]]] = {}
        for strategy in args.strategies:
            def bodies(n: int) -> list[dict]:
                return [{"user_id": str(next(users)), "k": 10, "strategy": strategy} for _ in range(n)]

            warm_up = bodies(warmup)
            calls, parallel, breakdown[strategy] = topology(base, warm_up)
            urls = {"recserve": f"{base}/v1/recommend",
                    "no-op floor": f"{base}/noop/v1/recommend?calls={calls}&parallel={str(parallel).lower()}"}
            timed_run(urls, warm_up, 1)  # connections and replicas warm (these users are not measured after)
            shape = f"{calls} {'parallel' if parallel else 'sequential'} calls"
            for clients in rows:
                for schedule in args.schedules:
                    fresh = bodies(args.requests)
                    for phase in args.phases:
                        samples, cached = timed_run(urls, fresh, clients, prime="recserve" if phase == "warm" else None,
                                                    block=SCHEDULES[schedule])
                        print_ratio_rows(f"{strategy} ({shape}) | {clients} | {phase} | {schedule}", samples, cached)
        print(f"\nEach stage's p50 ms as the ingress timed it, over the {warmup} sequential warm-up requests:")
        for strategy, stages in breakdown.items():
            print(f"- {strategy}: " + ", ".join(f"{name} {statistics.median(v):.1f}" for name, v in stages.items()))
    finally:
        serving.stop()
        scratch.cleanup()


if __name__ == "__main__":
    main()
