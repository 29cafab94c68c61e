"""LightGCN on the Gowalla paper split: Recall@20 / NDCG@20 over training wall time, on this machine.

    .venv/bin/python -m benchmarks.lightgcn_gowalla [--minutes 60 | --epochs N] [--eval-every 4] [--set KEY=VALUE ...]

Full ranking over all 40,981 items for all 29,858 test users, train items masked (the paper's
protocol; popularity scores 0.0416 / 0.0317 on it). Test metrics are measured at checkpoints for the
curve; training time excludes those evaluations. `--minutes` fits the learning-rate schedule to a
time budget (what this machine reaches in that time); `--epochs` fits it to an epoch count, so the
result does not depend on the machine's speed. Writes benchmarks/results/lightgcn_gowalla.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks.gowalla_data import DEFAULT_DATA_DIR, ROOT, gowalla_protocol  # noqa: E402
from models.evaluation import evaluate_full_ranking  # noqa: E402
from models.lightgcn_training import LightGCNConfig, train_lightgcn  # noqa: E402
from pipelines.cli import parse_overrides  # noqa: E402

PAPER = {"recall@20": 0.1830, "ndcg@20": 0.1554}
POPULARITY = {"recall@20": 0.0416, "ndcg@20": 0.0317}
# The plain sparse-CSR LightGCN of the issue (BPR, batch 8192, lr 5e-3, one negative) on this machine.
REFERENCE_CURVE = [(2.4, 0.1226), (15, 0.1532), (30, 0.1636)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=60.0, help="training time budget")
    budget.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of a time budget")
    parser.add_argument("--eval-every", type=int, default=4, help="epochs between test checkpoints")
    parser.add_argument("--device", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a LightGCNConfig field")
    parser.add_argument("--out", default=ROOT / "benchmarks" / "results" / "lightgcn_gowalla")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    # Each checkpoint is logged as it is measured, so a run cut short still leaves its curve.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    protocol = gowalla_protocol(args.data_dir)
    graph = protocol.graph
    budget = {"time_budget_s": None, "max_epochs": args.epochs} if args.epochs else \
        {"time_budget_s": args.minutes * 60, "max_epochs": 100_000}
    settings = {**budget, "eval_every": args.eval_every, "patience": None, **parse_overrides(args.set, args.device)}
    config = LightGCNConfig.model_validate(settings)
    print(f"config: {config.model_dump_json()}", flush=True)

    def test_metrics(embeddings):
        # Ranked on the training device: on a GPU, ranking on the CPU would cost more than the training.
        scores = embeddings.to(config.device).scores
        return evaluate_full_ranking(scores, graph.seen, protocol.test, ks=(20,)).as_dict()

    started = time.perf_counter()
    result = train_lightgcn(graph.normalized_adjacency(config.edge_values), graph.edge_index, graph.num_users,
                            graph.num_items, config, test_metrics, monitor="recall@20")
    wall = time.perf_counter() - started
    curve = [{"epoch": c.epoch, "minutes": round(c.train_seconds / 60, 2), "recall@20": round(c.metrics["recall@20"], 4),
              "ndcg@20": round(c.metrics["ndcg@20"], 4)} for c in result.history]
    best = max(curve, key=lambda c: c["recall@20"])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {config.device}"
    if torch.device(config.device).type == "cuda":
        machine += f" ({torch.cuda.get_device_name(config.device)})"
    summary = {"machine": machine, "config": config.model_dump(), "epochs": result.epochs_run,
               "train_minutes": round(result.train_seconds / 60, 1), "wall_minutes": round(wall / 60, 1),
               "best": best, "curve": curve, "paper": PAPER, "popularity": POPULARITY}

    args.out = os.fspath(args.out)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(f"{args.out}.json", "w") as f:
        json.dump(summary, f, indent=2)
    plot(curve, f"{args.out}.png", config)

    print("\n| training minutes | epoch | Recall@20 | NDCG@20 |\n|---:|---:|---:|---:|")
    for c in curve:
        print(f"| {c['minutes']:.1f} | {c['epoch']} | {c['recall@20']:.4f} | {c['ndcg@20']:.4f} |")
    print(f"\nbest Recall@20 {best['recall@20']:.4f} / NDCG@20 {best['ndcg@20']:.4f} at {best['minutes']:.1f} min "
          f"(paper {PAPER['recall@20']} / {PAPER['ndcg@20']}, popularity {POPULARITY['recall@20']} / "
          f"{POPULARITY['ndcg@20']}); {result.epochs_run} epochs, {summary['train_minutes']} training minutes, "
          f"{summary['wall_minutes']} wall minutes with evaluations; {machine}")
    return 0


def plot(curve: list[dict], path: str, config: LightGCNConfig) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([c["minutes"] for c in curve], [c["recall@20"] for c in curve], marker=".", label=f"recserve ({config.loss})")
    on_cpu = torch.device(config.device).type == "cpu"
    if on_cpu:  # a 2-core CPU's minutes: no reference on another device's time axis
        ax.plot(*zip(*REFERENCE_CURVE), marker="s", linestyle="--", label="plain sparse-CSR LightGCN (BPR)")
    ax.axhline(PAPER["recall@20"], color="green", linestyle=":", label="paper (1000 epochs)")
    ax.axhline(POPULARITY["recall@20"], color="grey", linestyle=":", label="popularity")
    ax.set_xlabel("training minutes (2-core CPU)" if on_cpu else f"training minutes ({config.device})")
    ax.set_ylabel("test Recall@20")
    ax.set_title("LightGCN on Gowalla (paper split, full ranking)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
