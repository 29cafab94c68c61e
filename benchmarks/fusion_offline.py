"""Attention fusion offline: every served source alone, the cascade, fusion, popularity and item-kNN.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.fusion_offline --dataset ml-100k|steam [--set KEY=VALUE ...]

`recserve train fusion`'s two stages (pipelines/fusion.py) on the dataset's temporal 70/10/20 split: the
sources fitted on train give candidate lists for the validation users, on which the ranker is trained; the
sources fitted again on train + validation give the lists measured on the test period in the shared protocol
(full ranking, earlier items masked, returning users). `--set` takes `FusionOptions` settings (JSON values;
a nested one changes only the keys it names, e.g. `--set hgt='{"max_epochs": 4}'`).

Steam's play file has no times: its events got seeded random timestamps, so its "temporal" split is a random
holdout, no two events of a user are a session, and TGN (a model of event order and recency) has nothing to
learn; it is left out there. Writes benchmarks/results/fusion_<dataset>.json and a Markdown report with
plots in benchmarks/results/fusion_<dataset>/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings

import torch

from benchmarks.gowalla_data import DEFAULT_DATA_DIR, ROOT
from fusion.ranker import MIN_SOURCE_WEIGHT
from graph_builders.bipartite import BipartiteGraph
from graph_builders.edge_weights import EdgeWeights
from graph_builders.splits import temporal_split
from models.item_knn import ItemKNN
from pipelines.cli import parse_overrides
from pipelines.datasets import read_dataset
from pipelines.fusion import EVERY_SOURCE, FusionOptions, run_fusion
from pipelines.protocol import RankingProtocol, TrainingData
from pipelines.reports import metric_table, plot_attention, write_report

# Per dataset, what differs from FusionOptions' defaults (why: the module docstring).
DATASET_OPTIONS = {
    "ml-100k": {},
    "steam": {"sources": ["hgt", "lightgcn", "content", "popularity"]},
}
ORDER = ("fusion", EVERY_SOURCE, "cascade", "tgn", "hgt", "lightgcn", "content", "popularity", "popularity (overall)", "item-knn",
         "item-knn (binary, no decay)")


def binary_item_knn(data: TrainingData) -> dict[str, float]:
    """item-kNN on the binary history without time decay: the protocol's item-kNN uses the decayed weights,
    which on Steam's random timestamps leave little more than each user's latest items (BENCHMARKS.md,
    content retriever on Steam)."""
    protocol = RankingProtocol.build(data, EdgeWeights())
    graph = BipartiteGraph.from_events(data.history, data.items, EdgeWeights(half_life_days=None), binary=True)
    if graph.user_ids != protocol.graph.user_ids or graph.item_ids != protocol.graph.item_ids:
        raise AssertionError("the binary graph orders users or items differently from the protocol's")
    return protocol.evaluate(ItemKNN.fit(graph.user_item_csr()).scores)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", choices=sorted(DATASET_OPTIONS))
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a FusionOptions setting")
    parser.add_argument("--name", default=None, help="results name (default fusion_<dataset>)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")

    started = time.perf_counter()
    dataset = read_dataset(args.dataset, args.data_dir)
    data = TrainingData(dataset.events, dataset.items, dataset.users, temporal_split(dataset.events), "temporal 70/10/20")
    options = FusionOptions.model_validate({**DATASET_OPTIONS[args.dataset], **parse_overrides(args.set, None)})
    run = run_fusion(data, options)
    run.metrics["item-knn (binary, no decay)"] = binary_item_knn(data)
    seconds = time.perf_counter() - started

    name = args.name or f"fusion_{args.dataset}"
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} .venv/bin/python -m benchmarks.fusion_offline " \
              + " ".join(f"'{a}'" if " " in a or "{" in a else a for a in sys.argv[1:])
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} thread(s)")
    results = {m: run.metrics[m] for m in ORDER if m in run.metrics}
    history = [{"epoch": h["epoch"], "loss": h["train_loss"], "held-out loss": h["validation_loss"],
                **({"held-out ndcg@20": h["validation_ndcg@20"]} if "validation_ndcg@20" in h else {})}
               for h in run.training.history]
    report = {
        "dataset": args.dataset,
        "command": command,
        "machine": machine,
        "seconds": round(seconds, 1),
        "split": "temporal 70/10/20" + (" (random timestamps: a seeded random holdout)" if args.dataset == "steam" else ""),
        "options": options.model_dump(),
        "results": results,
        "validation": run.validation,
        "attention": run.attention,
        "summary": run.summary,
        "source_weights": run.source_weights,
        "training": {"selected_epoch": run.training.best_epoch, "epochs_run": run.training.epochs_run,
                     "seconds": round(run.training.train_seconds, 1), "history": run.training.history},
    }
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    out_dir = ROOT / "benchmarks" / "results" / name
    path = write_report(
        title=f"Attention fusion offline: {args.dataset}",
        facts={
            "command": f"`{command}`",
            "machine": machine,
            "run time": f"{seconds:.0f} s",
            "split": report["split"],
            "protocol": "full ranking over all items, earlier items masked, returning users' new relevant test items",
            "sources": ", ".join(options.sources) + ("" if "tgn" in options.sources else
                                                      " (no TGN: no real timestamps, so no order or sessions to learn)"),
            "request (cascade and fusion alike)": "one per user, at their first event of the period: time = its time, "
                                                  "history length = their earlier events, session active = their last "
                                                  f"earlier event at most {options.session_gap_s:.0f} s before, device = "
                                                  "that event's device",
            "rows": "each source alone answers every user it can (TGN too); the cascade and fusion get TGN's list "
                    "only with an active session; popularity = the cascade's stage (by device when known), "
                    "popularity (overall) and item-knn = the protocol's baselines (decayed weights); item-knn "
                    "(binary, no decay) = item-kNN on the undecayed binary history",
            **{k: v for k, v in run.summary.items()},
        },
        results=results,
        out_dir=out_dir,
        curves=history,
    )
    plot_attention(run.attention, options.sources, out_dir / "attention.png")
    attention_rows = ["| context | requests | " + " | ".join(options.sources) + " |",
                      "|---|---:|" + "---:|" * len(options.sources)]
    attention_rows += [f"| {group} | {int(w['requests'])} | " + " | ".join(f"{w[s]:.3f}" for s in options.sources) + " |"
                       for group, w in run.attention.items()]
    extra = [
        "## Held-out validation users (stage A: what settings are chosen on)", "",
        "The validation-period users held out from the ranker's training (its epoch is chosen on them), among "
        "those whose candidates hold at least one of their items; sources fitted on the train period; cold "
        "users included.", "",
        metric_table({m: run.validation[m] for m in ORDER if m in run.validation}), "",
        "## Learned attention by request context", "",
        "Mean source weight over the requests of both stages (validation and test users), by context.", "",
        *attention_rows, "", "![attention by context](attention.png)", "",
        "## Asking fewer sources: `fusion_min_source_weight`", "",
        "Fusion as served with each setting of the ingress's `fusion_min_source_weight` (default "
        f"{MIN_SOURCE_WEIGHT}): a source whose attention in the request's context is below it is not asked. "
        "Model calls per request: the sources asked (of those loaded), the mean over the test requests.", "",
        "| fusion_min_source_weight | model calls per request | Recall@20 | NDCG@20 |", "|---:|---:|---:|---:|",
        *(f"| {weight} | {m['calls per request']:.2f} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} |"
          for weight, m in run.source_weights.items()), "",
    ]
    with path.open("a") as report_file:
        report_file.write("\n".join(extra))

    print(f"{args.dataset}: {seconds:.0f} s; test period, full ranking")
    print("| method | Recall@20 | NDCG@20 | validation NDCG@20 |\n|---|---:|---:|---:|")
    for method, m in results.items():
        held = run.validation.get(method, {}).get("ndcg@20")
        print(f"| {method} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} | {'' if held is None else f'{held:.4f}'} |")
    print(f"wrote {out} and {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
