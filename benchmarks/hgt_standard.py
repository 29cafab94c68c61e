"""HGT against LightGCN, popularity and item-kNN on the standard split, with training cost.

    .venv/bin/python -m benchmarks.hgt_standard [--dataset steam|ml-100k] [--hgt-set KEY=VALUE ...]

Split and protocol are `recserve train`'s (pipelines/protocol.py): temporal 70/10/20, full ranking of
returning users' new test items, earlier items masked. Steam's play file has no times, so its
"temporal" split is a seeded random holdout (pipelines/datasets/steam.py); play hours are the edge
weights, developers/publishers the providers, tags the badges, genres the categories. MovieLens-100K
adds the users' age band, gender and occupation as attribute nodes.

Each model trains in a fresh process, so "peak RSS" is that model's own high-water mark (data loading
included). Both graph models select their epoch on the same kind of held-out edges (10% of the history).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from benchmarks.gowalla_data import DEFAULT_DATA_DIR, ROOT
from graph_builders.edge_weights import EdgeWeights
from graph_builders.heterogeneous import build_hetero_graph
from graph_builders.splits import temporal_split
from models.evaluation import evaluate_full_ranking
from pipelines.datasets import read_dataset
from pipelines.hgt import HGTOptions, fit_selected, protocol_scores
from pipelines.lightgcn import LightGCNOptions, fit_on, holdout_edges
from pipelines.protocol import RankingProtocol, TrainingData, baseline_metrics


def load(dataset: str, data_dir: str) -> tuple[TrainingData, RankingProtocol]:
    warnings.filterwarnings("ignore")
    data = read_dataset(dataset, data_dir)
    training = TrainingData(data.events, data.items, data.users, temporal_split(data.events), "temporal 70/10/20")
    return training, RankingProtocol.build(training, EdgeWeights())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_hgt(dataset: str, data_dir: str, settings: dict) -> dict:
    data, protocol = load(dataset, data_dir)
    graph = build_hetero_graph(data.history, data.items, data.users, EdgeWeights())
    result = fit_selected(graph, HGTOptions(refit=False, **settings))
    metrics = protocol.evaluate(protocol_scores(result.layers, graph, protocol))
    return {
        **metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": result.train_seconds,
        "seconds_per_epoch": result.train_seconds / max(result.epochs_run, 1),
        "peak_batch_nodes": result.peak_batch_nodes,
        "nodes": {t: len(ids) for t, ids in graph.node_ids.items()},
        "peak_rss_mb": peak_rss_mb(),
    }


def run_lightgcn(dataset: str, data_dir: str, settings: dict) -> dict:
    data, protocol = load(dataset, data_dir)
    options = LightGCNOptions(refit=False, **settings)
    fit, validation = holdout_edges(protocol.graph, options.validation_fraction, options.seed)
    result = fit_on(fit, options, lambda emb: evaluate_full_ranking(emb.scores, fit.seen, validation, ks=(20,)).as_dict())
    metrics = protocol.evaluate(result.embeddings.scores)
    return {
        **metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": result.train_seconds,
        "seconds_per_epoch": result.train_seconds / max(result.epochs_run, 1),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_baselines(dataset: str, data_dir: str) -> dict:
    data, protocol = load(dataset, data_dir)
    return baseline_metrics(data, protocol)


def in_fresh_process(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="steam", choices=["steam", "ml-100k"])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--hgt-set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--lightgcn-set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/hgt_standard_<dataset>.json")
    args = parser.parse_args()
    hgt_settings = dict(s.split("=", 1) for s in args.hgt_set)
    lightgcn_settings = dict(s.split("=", 1) for s in args.lightgcn_set)

    started = time.perf_counter()
    results = run_baselines(args.dataset, args.data_dir)
    results["lightgcn"] = in_fresh_process(run_lightgcn, args.dataset, args.data_dir, lightgcn_settings)
    results["hgt"] = in_fresh_process(run_hgt, args.dataset, args.data_dir, hgt_settings)
    print(f"{args.dataset}, temporal 70/10/20, full ranking ({time.perf_counter() - started:.0f} s)")
    print("| model | Recall@20 | NDCG@20 | s / epoch | epochs (best) | peak RSS MB |\n|---|---|---|---|---|---|")
    for name, m in results.items():
        cost = (f"{m['seconds_per_epoch']:.2f} | {m['epochs_run']} ({m['best_epoch']}) | {m['peak_rss_mb']:.0f}"
                if "seconds_per_epoch" in m else "— | — | —")
        print(f"| {name} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} | {cost} |")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"hgt_standard_{args.dataset}.json")
    report = {
        "dataset": args.dataset,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
        "settings": {"hgt": hgt_settings, "lightgcn": lightgcn_settings},
        "results": results,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
