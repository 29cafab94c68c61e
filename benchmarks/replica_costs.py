"""What a cold fusion request costs in each part of the app, timed without Serve, one request at a time.

    (unset DATABASE_URL; OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.replica_costs [--namespace demo] [--users 300])

Each model deployment's class is built directly and loads its served artifact with its own `reconfigure`,
as a replica does; then, for users not asked before, the script times what a fusion request runs:
- the ingress's own steps: the user's seen items read (a worker thread and one query, as `SeenItems` does on a
  cache miss) and the ranker over the five answers (`FusionScorer.rank`);
- each replica's `recommend`, with the query fusion sends (k = the ranker's candidates per source, the seen
  items excluded, `session_only` false).
- sending a source's answer (popularity's, `k` candidates) back: pickled and unpickled with cloudpickle, Serve's
  default for handle calls over gRPC, and with plain pickle, which the ingress asks for (`MODEL_CALLS`); and, for
  comparison, the same answer as a `Candidate` object per item, as models answered before `Candidates`.
And the two costs that session 13 took off the hot path, so they can be compared with the rest:
- TGN's log read (`catch_up`: two PostgreSQL queries in a worker thread), which `recommend` now does only
  when PostgreSQL has notified it of new rows;
- a hop to a one-thread executor and back, which the content replica used to make for each vector-store read.

The figures are the work itself on a quiet machine. The latency benchmark runs five replicas, the ingress and
the HTTP proxy on the same two cores, where each step also waits for a core; compare within this table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime

from ray import cloudpickle

from deployments.content import ContentDeployment
from deployments.contract import Candidates, ModelQuery
from deployments.hgt import HGTDeployment
from deployments.lightgcn import LightGCNDeployment
from deployments.popularity import PopularityDeployment
from deployments.tgn import TGNDeployment
from fusion.ranker import AttentionFusion, FusionContext, FusionScorer, read_config
from stores.artifacts import ArtifactStore
from stores.event_store import EventStore
from stores.postgres import Database, resolve_dsn
from stores.settings import get_settings

DEPLOYMENTS = {"tgn": TGNDeployment, "hgt": HGTDeployment, "lightgcn": LightGCNDeployment,
               "content": ContentDeployment, "popularity": PopularityDeployment}
WARM_UP = 10  # users asked before the timing starts


async def measure(namespace: str, users: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    settings = get_settings()
    artifacts_dir = str(settings.artifacts_dir)
    models = {}
    for name, deployment in DEPLOYMENTS.items():
        models[name] = deployment.func_or_class(namespace, artifacts_dir)  # the class under @serve.deployment
        await models[name].reconfigure({})
    folder = ArtifactStore(settings.artifacts_dir, namespace).resolve("fusion", "current")
    ranker = FusionScorer(AttentionFusion.load(folder))
    per_source = int(read_config(folder)["candidates_per_source"])
    store = EventStore(Database.from_settings(settings.model_copy(update={"namespace": namespace})))
    hop = ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()

    calls = {name: model.recommend for name, model in models.items()}

    async def lightgcn_alone(query: ModelQuery) -> Candidates:
        return models["lightgcn"].loaded.rank([query])[0]

    calls["lightgcn"] = lightgcn_alone  # `@serve.batch` needs a replica; a lone request is a batch of one

    timings: dict[str, list[float]] = defaultdict(list)
    answered: dict[str, int] = defaultdict(int)  # requests a source had a list for
    recording = False

    @contextmanager
    def clock(step: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        if recording:
            timings[step].append((time.perf_counter() - started) * 1000)

    for n, user in enumerate(map(str, store.events_frame()["user_id"].dropna().unique()[: WARM_UP + users])):
        recording = n >= WARM_UP  # the first calls load lazily
        with clock("ingress: seen items (thread + query)"):
            seen = await asyncio.to_thread(store.seen_items, user)
        query = ModelQuery(user_id=user, k=per_source, exclude_ids=seen, session_only=False)
        lists = {}
        for name, recommend in calls.items():
            with clock(f"{name}: recommend"):
                found = await recommend(query)
            lists[name] = list(zip(found.item_ids, found.scores))
            answered[name] += recording and bool(found)
        # What a model call's answer costs to send back, with Serve's default serializer and with the ingress's.
        with clock("popularity's answer through cloudpickle (Serve's default): dump + load"):
            cloudpickle.loads(cloudpickle.dumps(found))
        with clock("popularity's answer through pickle (`MODEL_CALLS`): dump + load"):
            pickle.loads(pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL))
        with clock("the same as a `Candidate` per item, the contract before `Candidates`: build + dump + load"):
            pickle.loads(pickle.dumps(list(found.rows()), protocol=pickle.HIGHEST_PROTOCOL))
        with clock("ingress: ranker"):
            ranker.rank(lists, FusionContext(history_length=len(seen), time=datetime.now(UTC)), limit=10)
        with clock("tgn: log read (catch_up)"):
            await models["tgn"].catch_up(models["tgn"].loaded)
        with clock("a hop to a worker thread and back"):
            await loop.run_in_executor(hop, lambda: None)
    models["tgn"].log_watch.close()
    return timings, answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()
    settings = get_settings()
    os.environ["DATABASE_URL"] = resolve_dsn(settings)  # the deployments read it, as replicas do
    timings, answered = asyncio.run(measure(args.namespace or settings.namespace, args.users))
    print(f"\n{args.users} cold fusion requests, one at a time, without Serve (ms)\n")
    print("| step | p50 | mean | p99 | answered |\n|---|---:|---:|---:|---:|")
    for step, values in timings.items():
        p99 = statistics.quantiles(values, n=100)[98]
        source = step.removesuffix(": recommend")
        share = f"{answered[source] / len(values):.0%}" if source != step else ""
        print(f"| {step} | {statistics.median(values):.2f} | {statistics.mean(values):.2f} | {p99:.2f} | {share} |")


if __name__ == "__main__":
    main()
