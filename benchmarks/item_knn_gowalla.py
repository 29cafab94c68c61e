"""Item-kNN on the Gowalla paper split, the baseline quoted next to LightGCN in BENCHMARKS.md.

    .venv/bin/python -m benchmarks.item_knn_gowalla [--neighbors 100] [--shrink 100]
"""

from __future__ import annotations

import argparse
import time
import warnings

from benchmarks.gowalla_data import DEFAULT_DATA_DIR, gowalla_protocol
from models.item_knn import ItemKNN


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--neighbors", type=int, default=100)
    parser.add_argument("--shrink", type=float, default=100.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    protocol = gowalla_protocol(args.data_dir)
    started = time.perf_counter()
    model = ItemKNN.fit(protocol.graph.user_item_csr(), neighbors=args.neighbors, shrink=args.shrink)
    fitted = time.perf_counter() - started
    metrics = protocol.evaluate(model.scores, ks=(20,))
    print(f"item-kNN (k={args.neighbors}, shrink {args.shrink:g}): Recall@20 {metrics['recall@20']:.4f} / "
          f"NDCG@20 {metrics['ndcg@20']:.4f}; fit {fitted:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
