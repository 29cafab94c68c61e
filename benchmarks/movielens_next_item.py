"""MovieLens-100K, chronological split: next-item metrics for returning users, TGN against LightGCN,
popularity and the session baselines, all on the same cases in one run.

    .venv/bin/python -m benchmarks.movielens_next_item [--tgn-epochs 20] [--out benchmarks/results/movielens_next_item.json]

Split: one global time cutoff (graph_builders/splits.py: train 70% / validation 10% / test 20% of the
events). A case is a test rating of a user who rated before the test period (pipelines/tgn.py): TGN ranks the catalogue
from its state just before the rating and then observes it; LightGCN (trained on train + validation)
ranks with the user's fixed embedding. Users never rate a movie twice, so every method has the user's
earlier movies masked. Catalogue: the movies rated before the test period.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import torch

from benchmarks.gowalla_data import DEFAULT_DATA_DIR, ROOT
from graph_builders.bipartite import BipartiteGraph
from graph_builders.edge_weights import EdgeWeights
from graph_builders.splits import temporal_split
from models.lightgcn_training import LightGCNConfig
from pipelines.datasets import read_dataset
from pipelines.lightgcn import fit_on
from pipelines.protocol import TrainingData
from pipelines.tgn import TGNOptions, baseline_metrics, run_next_item, score_cases


def lightgcn_metrics(data: TrainingData, run, config: LightGCNConfig) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    graph = BipartiteGraph.from_events(data.history, data.items, EdgeWeights())
    embeddings = fit_on(graph, config).embeddings
    columns = torch.tensor([graph.item_index[item] for item in run.items.item_ids])
    keys = {node: key for key, node in run.nodes.items()}
    users = [graph.user_index[keys[node]] for node in run.test.src[run.cases.mask].tolist()]
    fitted = time.perf_counter() - started
    items = embeddings.items[columns]
    metrics = score_cases(lambda batch: embeddings.users[torch.tensor(batch)] @ items.T, users, run.targets,
                          len(run.items), run.exclude)
    return metrics, fitted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--tgn-epochs", type=int, default=20)
    parser.add_argument("--out", default=ROOT / "benchmarks" / "results" / "movielens_next_item.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

    dataset = read_dataset("ml-100k", args.data_dir)
    data = TrainingData(dataset.events, dataset.items, dataset.users, temporal_split(dataset.events), "temporal 70/10/20")
    options = TGNOptions(max_epochs=args.tgn_epochs, patience=3, mask_seen=True, returning_only=True)
    run = run_next_item(data, options)
    results = {"tgn": {**run.metrics, "fit_seconds": run.seconds}}
    lightgcn_config = LightGCNConfig(loss="bpr", batch_size=2048, max_epochs=200, time_budget_s=120)
    metrics, seconds = lightgcn_metrics(data, run, lightgcn_config)
    results["lightgcn"] = {**metrics, "fit_seconds": seconds}
    results.update(baseline_metrics(run.history, run.items, run.targets, run.cases, options.session_gap_s,
                                    run.exclude))

    print(f"MovieLens-100K, {int(run.cases.mask.sum()):,} next-item cases of returning users, "
          f"{len(run.items):,} movies, earlier movies masked")
    print("| method | Recall@10 | MRR@10 | Recall@20 | MRR@20 | fit s |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        fit = f"{r['fit_seconds']:.0f}" if "fit_seconds" in r else ""
        print(f"| {name} | {r['recall@10']:.4f} | {r['mrr@10']:.4f} | {r['recall@20']:.4f} | {r['mrr@20']:.4f} | {fit} |")
    report = {
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "dataset": "ml-100k, temporal 70/10/20",
        "cases": int(run.cases.mask.sum()),
        "items": len(run.items),
        "tgn": {"options": options.model_dump(), "selected_epoch": run.result.best_epoch,
                "stopped": run.result.stopped_because},
        "lightgcn_config": lightgcn_config.model_dump(),
        "methods": results,
    }
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
