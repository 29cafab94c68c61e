"""The attention-fusion ranker's own step in the ingress: choosing the sources to ask
(`FusionScorer.sources_worth_asking`), and `rank()` over five sources' lists, as the fusion strategy calls
it (only the top k turned into Python objects) and over the whole union; next to the same ranking through
the torch module's forward pass, which the ingress used before `FusionScorer`.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.fusion_ranking [--repeats 500]
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime

import numpy as np

import torch

from fusion.ranker import AttentionFusion, FusionContext, FusionScorer, evidence

SOURCES = ["tgn", "hgt", "lightgcn", "content", "popularity"]


def timed(step, repeats: int) -> tuple[float, float]:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(timings, 50)), float(np.percentile(timings, 99))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=500)
    args = parser.parse_args()
    module = AttentionFusion(SOURCES).eval()
    ranker = FusionScorer(module)
    context = FusionContext(history_length=30, device="mobile", time=datetime.now(UTC))
    rng = random.Random(0)
    print("| step | candidates per source | returned | p50 ms | p99 ms |\n|---|---:|---|---:|---:|")
    p50, p99 = timed(lambda: ranker.sources_worth_asking(context, SOURCES), args.repeats)
    print(f"| choose the sources | | | {p50:.2f} | {p99:.2f} |")

    @torch.no_grad()
    def torch_rank(lists: dict, limit: int) -> list:
        items, item_evidence, answered = evidence(lists, SOURCES)
        scores, _ = module(context.features()[None], item_evidence[None], answered[None])
        return [items[i] for i in torch.argsort(scores[0], descending=True, stable=True)[:limit].tolist()]

    for per_source in (50, 100):
        lists = {s: [(f"i{rng.randrange(2000)}", rng.random()) for _ in range(per_source)] for s in SOURCES}
        for limit, label in ((10, "top 10 (serving)"), (None, "whole union")):
            p50, p99 = timed(lambda: ranker.rank(lists, context, limit=limit), args.repeats)
            print(f"| rank | {per_source} | {label} | {p50:.2f} | {p99:.2f} |")
        p50, p99 = timed(lambda: torch_rank(lists, 10), args.repeats)
        print(f"| rank with the torch module (item ids only) | {per_source} | top 10 | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
