"""Time per LightGCN training iteration on Gowalla: recserve's trainer against PyG's stock LightGCN.

    .venv/bin/python -m benchmarks.lightgcn_speed [--iterations 10] [--batch-size 8192]

One iteration = full-graph propagation (3 layers, d=64, 70,839 nodes, 1.62M directed edges), BPR loss
with L2 on a batch of positive edges and one sampled negative each, backward, Adam step. Variants, same
data, same batch, measured alternately in one run (median of the iterations after a warm-up):
  - pyg-edge-index:  torch_geometric.nn.models.LightGCN on edge_index (gcn_norm + scatter every call);
  - pyg-sparse-csr:  the same PyG model on the pre-normalised torch sparse CSR adjacency;
  - recserve:        models.lightgcn.LightGCN: that CSR adjacency, with the symmetric backward product.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch_geometric.nn.models import LightGCN as PyGLightGCN

from benchmarks.gowalla_data import DEFAULT_DATA_DIR, gowalla_protocol
from models.lightgcn import LightGCN
from models.lightgcn_training import NegativeSampler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8192)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

    graph = gowalla_protocol(args.data_dir).graph
    num_users, num_items = graph.num_users, graph.num_items
    adjacency = graph.normalized_adjacency()
    users, items = graph.edge_index
    edge_index = torch.stack([torch.cat([users, items + num_users]), torch.cat([items + num_users, users])])

    torch.manual_seed(0)
    ours = LightGCN(num_users, num_items)
    pyg_csr = PyGLightGCN(num_users + num_items, 64, 3, normalize=False)
    pyg_edges = PyGLightGCN(num_users + num_items, 64, 3)
    variants = {
        "pyg-edge-index": (pyg_edges, lambda: pyg_edges.get_embedding(edge_index)),
        "pyg-sparse-csr": (pyg_csr, lambda: pyg_csr.get_embedding(adjacency)),
        "recserve": (ours, lambda: torch.cat(ours(adjacency))),
    }
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=1e-3) for name, (model, _) in variants.items()}
    sampler = NegativeSampler(graph.edge_index, num_items, torch.Generator().manual_seed(0))

    def step(name: str, batch_users, batch_pos, batch_neg) -> float:
        model, propagate = variants[name]
        ego = model.ego.weight if model is ours else model.embedding.weight
        started = time.perf_counter()
        out = propagate()
        u, p, n = out[batch_users], out[batch_pos + num_users], out[batch_neg + num_users]
        nodes = torch.cat([batch_users, batch_pos + num_users, batch_neg + num_users])
        loss = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean() + 1e-4 * ego[nodes].pow(2).sum() / len(nodes)
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()
        return time.perf_counter() - started

    times = {name: [] for name in variants}
    for iteration in range(args.iterations + 1):
        batch = torch.randint(users.numel(), (args.batch_size,))
        batch_users, batch_pos = users[batch], items[batch]
        batch_neg = sampler.sample(batch_users, 1).squeeze(1)
        for name in variants:
            seconds = step(name, batch_users, batch_pos, batch_neg)
            if iteration:  # the first one warms up allocators and caches
                times[name].append(seconds)
        print(f"iteration {iteration}: " + "  ".join(f"{n} {t[-1] if t else 0:.3f}s" for n, t in times.items()), flush=True)

    baseline = statistics.median(times["pyg-edge-index"])
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"batch {args.batch_size}, median of {args.iterations} iterations\n")
    print("| variant | seconds / iteration | speed-up vs PyG edge_index |\n|---|---:|---:|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.3f} | {baseline / median:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
