"""How long full-ranking evaluation of every Gowalla test user takes, and whether the protocol is right.

    .venv/bin/python benchmarks/evaluation_speed.py [--data-dir ../shared/data] [--batch-sizes 1024 4096]

Pipeline (the same one `recserve evaluate` uses): read_gowalla -> preset_split (the paper split) ->
BipartiteGraph on train (the `seen` mask) -> evaluation_targets -> evaluate_full_ranking over all
29,858 users x 40,981 items, for
  - popularity: score(u, i) = number of train interactions of item i;
  - a random-embedding dot product (d=64), the cost profile of LightGCN / HGT scoring.
Popularity on this split scores Recall@20 0.0416 and NDCG@20 0.0317 under the LightGCN protocol; a
different figure means the protocol differs, and the script exits 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from graph_builders import BipartiteGraph, evaluation_targets, pairs_csr, preset_split
from models.evaluation import RankingMetrics, ScoreFn, evaluate_full_ranking
from pipelines.datasets.gowalla import read_gowalla

ROOT = Path(__file__).resolve().parents[1]
POPULARITY_REFERENCE = {"recall@20": 0.0416, "ndcg@20": 0.0317}
TOLERANCE = 0.0005
T = TypeVar("T")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--dim", type=int, default=64)
    return parser.parse_args()


def timed(label: str, timings: dict[str, float], fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    timings[label] = time.perf_counter() - started
    return result


def machine() -> str:
    threads = torch.get_num_threads()
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads)"


def main() -> int:
    args = parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    prep: dict[str, float] = {}
    dataset = timed("read_gowalla", prep, read_gowalla, args.data_dir)
    split = timed("preset_split", prep, preset_split, dataset.events, dataset.preset_split)
    graph = timed(
        "BipartiteGraph.from_events", prep, BipartiteGraph.from_events, split.train, dataset.items, binary=True
    )
    targets = timed("evaluation_targets", prep, evaluation_targets, split.train, split.test)
    test_csr = timed("pairs_csr", prep, pairs_csr, targets, graph.user_index, graph.item_index)

    popularity = graph.item_degrees().float()
    torch.manual_seed(0)
    user_vectors = torch.randn(graph.num_users, args.dim)
    item_vectors = torch.randn(graph.num_items, args.dim)
    models: dict[str, ScoreFn] = {
        "popularity": lambda users: popularity.expand(users.numel(), -1),
        f"random dot product (d={args.dim})": lambda users: user_vectors[users] @ item_vectors.T,
    }
    results: list[tuple[str, int, RankingMetrics]] = [
        (name, batch, evaluate_full_ranking(score_fn, graph.seen, test_csr, ks=(20,), batch_size=batch))
        for name, score_fn in models.items()
        for batch in args.batch_sizes
    ]

    print(f"command: .venv/bin/python benchmarks/evaluation_speed.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"machine: {machine()}")
    print(
        f"data: Gowalla paper split, {graph.num_users:,} users x {graph.num_items:,} items, "
        f"{graph.edge_index.size(1):,} train edges, {test_csr._nnz():,} test pairs"
    )
    print("preparation: " + ", ".join(f"{label} {seconds:.2f} s" for label, seconds in prep.items()))
    print()
    print("| model | batch | users evaluated | seconds | users/s | Recall@20 | NDCG@20 | coverage@20 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, batch, m in results:
        print(
            f"| {name} | {batch} | {m.num_users:,} | {m.seconds:.2f} | {m.num_users / m.seconds:,.0f} "
            f"| {m.recall[20]:.4f} | {m.ndcg[20]:.4f} | {m.coverage[20]:.4f} |"
        )

    popular = next(m for name, _, m in results if name == "popularity")
    off = {key: popular[key] for key, ref in POPULARITY_REFERENCE.items() if abs(popular[key] - ref) > TOLERANCE}
    print()
    verdict = f"MISMATCH {off}" if off else "match"
    print(f"popularity reference (LightGCN protocol): Recall@20 0.0416, NDCG@20 0.0317 -> {verdict}")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
