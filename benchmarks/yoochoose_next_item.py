"""TGN against session baselines on YOOCHOOSE (the session-rec rsc15 100k-click sample): next-item
Recall@20 / MRR@20, all measured in one run.

    .venv/bin/python -m benchmarks.yoochoose_next_item [--tgn-epochs 20] [--out benchmarks/results/yoochoose_next_item.json]

Protocol: models/next_item.py (every prefix of every test session ranks the whole train catalogue for the
next click; ties count against the target). Methods, with session-rec's default settings:
popularity (train click counts), SKNN (k=100, sample_size=500, recent, cosine) and item co-occurrence
(session-rec's AR, pruning=20). Fit and evaluation times are wall seconds on `--threads` torch threads.
To add a method, add one METHODS entry: name -> (fit(data) -> model, score(model, prefixes) -> [B, I]).

TGN is streamed instead (pipelines/tgn.py): trained on the train clicks, it replays them, then every test
click is ranked from the state just before it and then observed, so memory follows the test day as it
would in serving. Its cases are the same (session, position >= 1) cases; the count is checked.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch_geometric.data import TemporalData

from benchmarks.yoochoose_data import DEFAULT_DATA_DIR, ROOT, YoochooseSessions, yoochoose_sessions
from graph_builders.edge_weights import EdgeWeights, interaction_key
from models.cooccurrence import ItemCooccurrence
from models.next_item import evaluate_next_item
from models.session_knn import SessionKNN, flatten_sessions
from models.tgn import TGNRecommender
from models.tgn_training import TGNConfig, train_tgn
from pipelines.tgn import SESSION_GAP_S, CaseLog, stream_metrics, tgn_stream

Fit = Callable[[YoochooseSessions], Any]
Score = Callable[[Any, list[list[int]]], torch.Tensor]
KS = (20,)


def popularity_scores(data: YoochooseSessions) -> torch.Tensor:
    """[num_items] click counts in train (session-rec's Pop: support = number of events)."""
    _, items = flatten_sessions(data.train_sessions, data.num_items)
    return torch.bincount(items, minlength=data.num_items).float()


METHODS: dict[str, tuple[Fit, Score]] = {
    "popularity": (popularity_scores, lambda counts, prefixes: counts.expand(len(prefixes), -1)),
    "sknn": (
        lambda data: SessionKNN.fit(data.train_sessions, data.num_items, data.train_session_times),
        SessionKNN.scores,
    ),
    "cooccurrence": (
        lambda data: ItemCooccurrence.fit(data.train_sessions, data.num_items),
        ItemCooccurrence.scores,
    ),
}


def run(data: YoochooseSessions, methods: dict[str, tuple[Fit, Score]]) -> dict[str, dict[str, float]]:
    results = {}
    for name, (fit, score) in methods.items():
        started = time.perf_counter()
        model = fit(data)
        fitted = time.perf_counter()
        metrics = evaluate_next_item(lambda prefixes: score(model, prefixes), data.cases, data.num_items, KS)
        results[name] = {**metrics, "fit_seconds": fitted - started, "eval_seconds": time.perf_counter() - fitted}
        print(f"{name}: Recall@20 {metrics['recall@20']:.4f}, MRR@20 {metrics['mrr@20']:.4f} "
              f"(fit {fitted - started:.1f} s, eval {results[name]['eval_seconds']:.1f} s)", flush=True)
    return results


def tgn_streams(data: YoochooseSessions) -> tuple[TemporalData, TemporalData, int]:
    """(train stream, test stream, user nodes): one node per session, clicks on train items only."""
    events = data.events[data.events["item_id"].isin(data.item_index)]
    keys = interaction_key(events).astype(str).unique().tolist()
    nodes = {key: data.num_items + i for i, key in enumerate(keys)}
    is_test = events["ts"] >= data.test_from
    train, test = (tgn_stream(part, nodes, data.item_index, EdgeWeights()) for part in (events[~is_test], events[is_test]))
    return train, test, len(nodes)


def tgn_metrics(model: TGNRecommender, data: YoochooseSessions, test: TemporalData, batch_size: int) -> dict[str, float]:
    cases = CaseLog(SESSION_GAP_S).feed(test)  # every test session is a new node: a case is position >= 1
    if int(cases.mask.sum()) != len(data.cases):
        raise RuntimeError(f"TGN streams {int(cases.mask.sum())} cases, the protocol has {len(data.cases)}")
    return stream_metrics(model, test, cases, batch_size)


def select_tgn_epochs(data_dir, config: TGNConfig) -> tuple[int, list[dict]]:
    """The epoch count with the best MRR@20 on session-rec's tuning split (train_tr -> train_valid)."""
    tuning = yoochoose_sessions(data_dir, part="validation")
    train, valid, users = tgn_streams(tuning)
    result = train_tgn(train, tuning.num_items, users, config,
                       validate=lambda model: tgn_metrics(model, tuning, valid, config.batch_size), progress=False)
    curve = [{"epoch": r.epoch, "seconds": round(r.train_seconds, 1), **r.metrics} for r in result.history]
    for point in curve:
        print(f"tuning epoch {point['epoch']}: Recall@20 {point['recall@20']:.4f} MRR@20 {point['mrr@20']:.4f}", flush=True)
    return result.best_epoch, curve


def run_tgn(data: YoochooseSessions, config: TGNConfig) -> dict[str, float]:
    train, test, users = tgn_streams(data)
    started = time.perf_counter()
    model = train_tgn(train, data.num_items, users, config, progress=False).model
    fitted = time.perf_counter()
    metrics = tgn_metrics(model, data, test, config.batch_size)
    print(f"tgn: Recall@20 {metrics['recall@20']:.4f}, MRR@20 {metrics['mrr@20']:.4f} "
          f"(fit {fitted - started:.1f} s, eval {time.perf_counter() - fitted:.1f} s)", flush=True)
    return {**metrics, "fit_seconds": fitted - started, "eval_seconds": time.perf_counter() - fitted}


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| method | Recall@20 | MRR@20 | Coverage@20 | fit s | eval s |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {name} | {r['recall@20']:.4f} | {r['mrr@20']:.4f} | {r['coverage@20']:.3f} | "
        f"{r['fit_seconds']:.2f} | {r['eval_seconds']:.2f} |"
        for name, r in results.items()
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--tgn-epochs", type=int, default=None,
                        help="default: chosen on session-rec's tuning split (train_tr -> train_valid, MRR@20)")
    parser.add_argument("--tgn-max-epochs", type=int, default=40)
    parser.add_argument("--out", default=ROOT / "benchmarks" / "results" / "yoochoose_next_item.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    torch.set_num_threads(args.threads)

    data = yoochoose_sessions(args.data_dir)
    results = run(data, METHODS)
    tuning_curve: list[dict] = []
    epochs = args.tgn_epochs
    if epochs is None:
        epochs, tuning_curve = select_tgn_epochs(args.data_dir, TGNConfig(max_epochs=args.tgn_max_epochs, patience=5))
    tgn_config = TGNConfig(max_epochs=epochs)
    results["tgn"] = run_tgn(data, tgn_config)
    print(markdown_table(results))
    report = {
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "dataset": "yoochoose-100k-sample (session-rec rsc15 train_full / test)",
        "protocol": "next item after every prefix of every test session, full train catalogue, no masking, "
        "ties counted against the target (models/next_item.py)",
        "train_sessions": len(data.train_sessions),
        "test_sessions": len(data.test_sessions),
        "items": data.num_items,
        "cases": len(data.cases),
        "tgn_config": tgn_config.model_dump(),
        "tgn_tuning_curve": tuning_curve,
        "methods": results,
    }
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
