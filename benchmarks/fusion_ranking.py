"""The attention-fusion ranker's own step in the ingress: `rank()` over five sources' lists, as the fusion
strategy calls it (only the top k turned into Python objects) and over the whole union.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.fusion_ranking [--repeats 500]
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime

import numpy as np

from fusion.ranker import AttentionFusion, FusionContext

SOURCES = ["tgn", "hgt", "lightgcn", "content", "popularity"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=500)
    args = parser.parse_args()
    ranker = AttentionFusion(SOURCES).eval()
    context = FusionContext(history_length=30, device="mobile", time=datetime.now(UTC))
    rng = random.Random(0)
    print("| candidates per source | returned | p50 ms | p99 ms |\n|---:|---|---:|---:|")
    for per_source in (50, 100):
        lists = {s: [(f"i{rng.randrange(2000)}", rng.random()) for _ in range(per_source)] for s in SOURCES}
        for limit, label in ((10, "top 10 (serving)"), (None, "whole union")):
            timings = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                ranker.rank(lists, context, limit=limit)
                timings.append((time.perf_counter() - started) * 1000)
            print(f"| {per_source} | {label} | {np.percentile(timings, 50):.2f} | {np.percentile(timings, 99):.2f} |")


if __name__ == "__main__":
    main()
