"""Content retriever (MiniLM) on Steam, overall and for items no collaborative model has seen.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.content_steam [--fraction 0.2] [--seed 0]

Protocol:
- Split: `recserve train`'s temporal 70/10/20 (graph_builders.splits.temporal_split). Steam's play file
  has no times, so this is a seeded random holdout (pipelines/datasets/steam.py). History = train +
  validation, as in pipelines/protocol.py.
- New items: a seeded random `fraction` of the played items. Every history event on them is removed
  from the training history, as if they had been launched at the test cutoff; they stay in the
  catalogue with their text. Every method is fitted on this reduced history only.
- Targets: test (user, item) pairs with an undecayed total weight >= 1 (graph_builders.splits
  .evaluation_targets' rule) of users who still have a training history, excluding items the user had
  in the full history. Unlike the standard protocol, targets may be items with no training event (the
  new items): that is the case being measured.
- Ranking: full ranking over the whole catalogue (models.evaluation.evaluate_full_ranking), the user's
  items in the full history masked (the platform knows what a user owns, even when the models did not
  train on it).
  (a) overall: every target; (b) new items: only targets that are new items, users with at least one;
  (c) among new items: the same targets as (b), but only new items are ranked (all others masked):
  popularity and item-kNN give every new item the same score there, so they are at chance.

Edge weights: every method uses the same weights, undecayed by default: Steam's timestamps are random,
so a 7-day decay would weight a user's items by noise (`--half-life-days 7` runs `recserve train`'s
default; the JSON records which).

Methods (all fitted on the reduced history):
  random          seeded uniform scores: chance level
  popularity      models.popularity, the weighted interaction mass per item
  item-knn        models.item_knn on the weighted user x item matrix (as pipelines.protocol's baseline)
  metadata tf-idf models.metadata_similarity (provider, category, badges, title words), user score =
                  sum_j W(u, j) sim(j, i): the text-free content baseline
  content, not centred  MiniLM vectors as encoded: shows what centring on the catalogue mean adds
  content (MiniLM)  models.content: centred MiniLM item vectors, user = weighted mean of their item
                  vectors (what `recserve train content` serves)
Ties are broken at random (see `ranked`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.gowalla_data import DEFAULT_DATA_DIR, ROOT
from graph_builders.bipartite import BipartiteGraph, csr_from_indices, pairs_csr
from graph_builders.edge_weights import EdgeWeights, aggregate_interactions, interaction_key
from graph_builders.splits import temporal_split
from models.content import ItemTextVectors, TextEncoder, catalogue_texts, user_vectors
from models.evaluation import evaluate_full_ranking
from models.item_knn import ItemKNN, gather_rows
from models.metadata_similarity import MetadataSimilarity
from models.popularity import PopularityModel
from pipelines.datasets import read_dataset

KS = (10, 20, 50)
QUERY = "space strategy with co-op"


def new_item_targets(
    history: pd.DataFrame, test: pd.DataFrame, graph: BipartiteGraph, min_weight: float = 1.0
) -> pd.DataFrame:
    """Relevant test pairs of users with a training history, any catalogue item, not in the user's full history."""
    relevant = aggregate_interactions(test, EdgeWeights().without_decay())
    relevant = relevant[relevant["weight"] >= min_weight]
    relevant = relevant[relevant["user_key"].isin(graph.user_index) & relevant["item_id"].isin(graph.item_index)]
    owned = pd.MultiIndex.from_arrays([interaction_key(history).to_numpy(), history["item_id"].astype(object).to_numpy()])
    pairs = pd.MultiIndex.from_arrays([relevant["user_key"].to_numpy(), relevant["item_id"].to_numpy()])
    return relevant[~pairs.isin(owned)][["user_key", "item_id"]].reset_index(drop=True)


def restrict_columns(csr: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The CSR's entries whose column is in the bool mask `keep`."""
    coo = csr.to_sparse_coo().coalesce()
    rows, cols = coo.indices()
    chosen = keep[cols]
    return csr_from_indices(rows[chosen], cols[chosen], tuple(csr.shape))


def ranked(score_fn, jitter: torch.Tensor, candidates: torch.Tensor | None = None):
    """score_fn with ties broken at random and, given candidates, every other item at -inf.

    Without the random tie-break, items that score the same (every new item under popularity or
    item-kNN: 0) would be ranked in catalogue order, and Steam's catalogue is ordered by first play,
    which follows popularity. The jitter is 1e-9 of the row's largest score: it only orders ties.
    """
    def scores(users: torch.Tensor) -> torch.Tensor:
        out = score_fn(users).double()
        scale = out.abs().amax(1, keepdim=True).clamp(min=1e-30)
        out = out + 1e-9 * scale * jitter[users].double()
        if candidates is not None:
            out[:, ~candidates] = float("-inf")
        return out
    return scores


def metadata_scores(model: MetadataSimilarity, interactions: torch.Tensor):
    def scores(users: torch.Tensor) -> torch.Tensor:
        rows = gather_rows(interactions, users)
        crow, cols, values = rows.crow_indices(), rows.col_indices(), rows.values()
        given = [cols[crow[b]:crow[b + 1]].tolist() for b in range(len(users))]
        weights = [values[crow[b]:crow[b + 1]].tolist() for b in range(len(users))]
        return model.scores(given, weights)
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--fraction", type=float, default=0.2, help="share of the played items held out as new")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--half-life-days", type=float, default=None, help="event weight decay; default none")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "content_steam.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    command = "OMP_NUM_THREADS=%s .venv/bin/python -m benchmarks.content_steam %s" % (
        os.environ.get("OMP_NUM_THREADS", "<unset>"), " ".join(sys.argv[1:]))
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    print(command)
    print(machine)

    started = time.perf_counter()
    data = read_dataset("steam", args.data_dir)
    split = temporal_split(data.events)
    history = pd.concat([split.train, split.validation], ignore_index=True)
    played = sorted(pd.unique(data.events["item_id"].dropna()).tolist())
    rng = np.random.default_rng(args.seed)
    new_items = set(rng.choice(np.asarray(played, dtype=object), size=round(args.fraction * len(played)), replace=False))
    train = history[~history["item_id"].isin(new_items)]
    weights = EdgeWeights(half_life_days=args.half_life_days)
    graph = BipartiteGraph.from_events(train, data.items, weights)
    is_new = torch.tensor([item in new_items for item in graph.item_ids])

    owned = history.assign(user_key=interaction_key(history))
    seen = pairs_csr(owned, graph.user_index, graph.item_index)
    targets = new_item_targets(history, split.test, graph)
    test_all = pairs_csr(targets, graph.user_index, graph.item_index)
    test_new = restrict_columns(test_all, is_new)
    interactions = graph.user_item_csr()
    print(f"steam: {len(data.events):,} events, {len(graph.item_ids):,} catalogue items "
          f"({int(is_new.sum())} new), {graph.num_users:,} users with a training history; "
          f"{len(targets):,} targets, {int(test_new.values().numel()):,} on new items "
          f"({time.perf_counter() - started:.1f} s to prepare)")

    encoder = TextEncoder()
    load_started = time.perf_counter()
    encoder.load()
    load_seconds = time.perf_counter() - load_started
    texts = catalogue_texts(data.items, graph.item_ids)
    encode_started = time.perf_counter()
    raw = encoder.encode(texts, batch_size=args.batch_size, progress=True)
    encode_seconds = time.perf_counter() - encode_started
    encoder.encode([QUERY])
    query_ms = []
    for _ in range(50):
        query_started = time.perf_counter()
        encoder.encode([QUERY])
        query_ms.append((time.perf_counter() - query_started) * 1000)
    pieces = [len(ids) for ids in encoder.load().tokenizer(texts)["input_ids"]]
    timings = {
        "word pieces per text (mean)": round(float(np.mean(pieces)), 1),
        "word pieces per text (max)": int(max(pieces)),
        "model load s": round(load_seconds, 2),
        "encode s": round(encode_seconds, 1),
        "items/s": round(len(texts) / encode_seconds, 1),
        "one query p50 ms": round(statistics.median(query_ms), 2),
        "one query p99 ms": round(float(np.percentile(query_ms, 99)), 2),
        "batch size": args.batch_size,
    }
    print(f"MiniLM: load {timings['model load s']} s; {len(texts):,} item texts in {timings['encode s']} s "
          f"({timings['items/s']} items/s, {timings['word pieces per text (mean)']} word pieces on average, "
          f"{timings['word pieces per text (max)']} at most); one query ({QUERY!r}) p50 {timings['one query p50 ms']} ms, "
          f"p99 {timings['one query p99 ms']} ms")

    generator = torch.Generator().manual_seed(args.seed)
    random_scores = torch.rand(graph.num_users, graph.num_items, generator=generator)
    jitter = torch.rand(graph.num_users, graph.num_items, generator=generator)
    popularity = PopularityModel.fit(train, graph.item_ids, weights)
    item_knn = ItemKNN.fit(interactions)
    metadata = MetadataSimilarity.fit(data.items, graph.item_ids, title_words=True)
    item_vectors = ItemTextVectors.build(encoder.fingerprint, texts, raw).items()
    content_users = user_vectors(interactions, item_vectors)
    raw_vectors = torch.from_numpy(raw)
    raw_users = user_vectors(interactions, raw_vectors)
    methods = {
        "random": lambda users: random_scores[users],
        "popularity": lambda users: popularity.overall.expand(len(users), -1),
        "item-knn": item_knn.scores,
        "metadata tf-idf": metadata_scores(metadata, interactions),
        "content, not centred": lambda users: raw_users[users] @ raw_vectors.T,
        "content (MiniLM)": lambda users: content_users[users] @ item_vectors.T,
    }
    cases = {
        "overall": (test_all, None),
        "new items": (test_new, None),
        "among new items": (test_new, is_new),
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    for case, (test, candidates) in cases.items():
        results[case] = {}
        for name, score_fn in methods.items():
            results[case][name] = evaluate_full_ranking(ranked(score_fn, jitter, candidates), seen, test, ks=KS).as_dict()

    users = {case: int(results[case]["random"]["num_users"]) for case in cases}
    header = " | ".join(f"{case} R@20 | {case} N@20" for case in cases)
    print(f"\nSteam, {args.fraction:.0%} of items new (seed {args.seed}); users: "
          + ", ".join(f"{case} {n:,}" for case, n in users.items()))
    print(f"| method | {header} |\n|---|" + "---:|" * (2 * len(cases)))
    for name in methods:
        cells = " | ".join(f"{results[c][name]['recall@20']:.4f} | {results[c][name]['ndcg@20']:.4f}" for c in cases)
        print(f"| {name} | {cells} |")
    total = time.perf_counter() - started
    print(f"\n({total:.0f} s in all)")

    report = {
        "command": command,
        "machine": machine,
        "protocol": {
            "split": "temporal 70/10/20 (Steam: seeded random times)",
            "new item fraction": args.fraction,
            "seed": args.seed,
            "edge weights": weights.model_dump(),
            "new items": int(is_new.sum()),
            "catalogue items": graph.num_items,
            "users evaluated": users,
        },
        "timings": timings,
        "results": results,
        "seconds": round(total, 1),
    }
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
