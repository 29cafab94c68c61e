"""Filtered top-10 search latency and upsert throughput of the vector store, embedded engine against
qdrant-client's local mode, measured in the same run through the same `VectorStore` calls the services use.

    .venv/bin/python -m benchmarks.vector_search [--points 50000] [--queries 2000] [--local-queries 40]

The collection is a catalogue-shaped set: `--points` normalised 384-d vectors (MiniLM's size) with a payload
of category (20 values), provider (2,000) and three badges (of 60). Text embeddings cluster by topic, so the
vectors are drawn around `--topics` random centres (noise 0.6 per dimension against unit-variance centres);
`--topics 0` draws them uniformly on the sphere, the adversarial case for HNSW. Queries are perturbed catalogue
vectors. The recall@10 of each search against exact numpy search is reported beside its speed.
Queries filter by category, by provider, by any of two badges, and not at all. qdrant-client's local mode is
brute force in Python, so it gets `--local-queries` queries per filter (it is the comparison, not the choice).

Upsert throughput is points written per second through `sync_version` (batches of 1,024), with the time to
seal the collection (build the HNSW and payload indexes, flush) reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient

from stores.vector_backends import HNSW_EF_CONSTRUCT, HNSW_M, EmbeddedBackend, ServerBackend
from stores.vectors import VectorSet, VectorStore

RESULTS = Path(__file__).parent / "results" / "vector_search.json"
DIM = 384


def catalogue(points: int, topics: int, seed: int = 0) -> tuple[VectorSet, list[dict]]:
    rng = np.random.default_rng(seed)
    if topics:
        centres = rng.normal(size=(topics, DIM))
        vectors = (centres[rng.integers(topics, size=points)] + 0.6 * rng.normal(size=(points, DIM))).astype(np.float32)
    else:
        vectors = rng.normal(size=(points, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [
        {
            "category": f"category-{rng.integers(20)}",
            "provider": f"provider-{rng.integers(2000)}",
            "badges": [f"badge-{b}" for b in rng.choice(60, size=3, replace=False)],
        }
        for _ in range(points)
    ]
    return VectorSet([f"item-{j}" for j in range(points)], vectors, payloads), payloads


def filters(payloads: list[dict], rng: np.random.Generator) -> dict[str, dict]:
    """One filter of each kind, drawn from the data so it matches something."""
    row = payloads[int(rng.integers(len(payloads)))]
    return {
        "category": {"category": row["category"]},
        "provider": {"provider": row["provider"]},
        "badges (any of 2)": {"badges": row["badges"][:2]},
        "none": {},
    }


def matches(payload: dict, where: dict) -> bool:
    return all(
        (set(payload["badges"]) & set(value)) if key == "badges" else payload[key] == value for key, value in where.items()
    )


def measure(store: VectorStore, items: VectorSet, payloads: list[dict], queries: int, seed: int) -> dict:
    """Sync the catalogue, then time filtered top-10 searches; returns upsert and per-filter figures."""
    started = time.perf_counter()
    store.sync_version("bench", "content", "v1", {"items": items}, progress=False)
    sync_s = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    rows: dict[str, dict] = {}
    for name in filters(payloads, rng):
        latencies, recalls = [], []
        for _ in range(queries):
            where = filters(payloads, rng)[name]
            query = items.vectors[rng.integers(len(items.ids))] + 0.3 * rng.normal(size=DIM).astype(np.float32)
            query /= np.linalg.norm(query)
            began = time.perf_counter()
            hits = store.search("bench", "content", "items", query, k=10, **where)
            latencies.append((time.perf_counter() - began) * 1000)
            allowed = np.array([matches(p, where) for p in payloads]) if where else np.ones(len(payloads), bool)
            scores = np.where(allowed, items.vectors @ query, -np.inf)
            exact = {items.ids[j] for j in np.argsort(-scores)[:10] if np.isfinite(scores[j])}
            recalls.append(len(exact & {i for i, _ in hits}) / max(len(exact), 1))
        rows[name] = {
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "recall_at_10": float(np.mean(recalls)),
            "queries": queries,
        }
    return {"sync_seconds": sync_s, "points_per_second": len(items.ids) / sync_s, "filters": rows}


class TimedSealBackend(EmbeddedBackend):
    """Times the seal (index build and flush), so upsert throughput can be reported without it."""

    seal_seconds = 0.0

    def seal(self, name: str) -> None:
        began = time.perf_counter()
        super().seal(name)
        self.seal_seconds += time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--local-queries", type=int, default=40, help="0 leaves qdrant-client's local mode out")
    parser.add_argument("--topics", type=int, default=300, help="topic centres; 0: uniform random vectors")
    parser.add_argument("--hnsw", type=int, nargs=2, metavar=("M", "EF_CONSTRUCT"), default=[HNSW_M, HNSW_EF_CONSTRUCT],
                        help="the embedded store's HNSW build settings (default: the store's own)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    items, payloads = catalogue(args.points, args.topics)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}; {args.points:,} points x {DIM}, "
          f"{args.topics or 'no'} topics; HNSW m={args.hnsw[0]}, ef_construct={args.hnsw[1]}")

    results = {}
    with tempfile.TemporaryDirectory() as folder, VectorStore(
        TimedSealBackend(Path(folder), hnsw_m=args.hnsw[0], hnsw_ef_construct=args.hnsw[1])
    ) as store:
        embedded = measure(store, items, payloads, args.queries, seed=1)
        embedded["seal_seconds"] = store.backend.seal_seconds
        embedded["upsert_points_per_second"] = args.points / (embedded["sync_seconds"] - store.backend.seal_seconds)
        results["embedded (qdrant-edge)"] = embedded
    if args.local_queries:
        warnings.filterwarnings("ignore", "Payload indexes have no effect")  # local mode has none: part of the comparison
        warnings.filterwarnings("ignore", "Local mode is not recommended")
        with VectorStore(ServerBackend(QdrantClient(location=":memory:"))) as store:
            local = measure(store, items, payloads, args.local_queries, seed=1)
            local["upsert_points_per_second"] = local["points_per_second"]
            results["qdrant-client local mode (:memory:)"] = local

    print("\n| store | filter | p50 ms | p99 ms | recall@10 | queries |\n|---|---|---|---|---|---|")
    for store_name, result in results.items():
        for name, row in result["filters"].items():
            print(f"| {store_name} | {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['recall_at_10']:.3f} | {row['queries']} |")
    print("\n| store | upsert points/s | seal (index build) s | sync total s |\n|---|---|---|---|")
    for store_name, result in results.items():
        print(
            f"| {store_name} | {result['upsert_points_per_second']:,.0f} | {result.get('seal_seconds', 0.0):.1f} "
            f"| {result['sync_seconds']:.1f} |"
        )
    args.out.parent.mkdir(exist_ok=True)
    summary = {"points": args.points, "dim": DIM, "topics": args.topics, "hnsw": args.hnsw, "results": results}
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
