"""Heterogeneous neighbour sampling in plain torch, for PyG's `NeighborLoader` / `LinkNeighborLoader`.

PyG's `NeighborSampler` does the sampling itself in pyg-lib or torch-sparse. Neither ships wheels on
PyPI for torch 2.13, so a plain pip install has neither and the loaders raise ImportError.
`TorchNeighborSampler` keeps everything else of PyG's sampler (CSC conversion, seed handling, negative
sampling, `filter_hetero_data`) and replaces only the compiled call. It has the same semantics as
torch-sparse's `hetero_neighbor_sample` (directional subgraph, seeds first in each node type's order,
newly reached nodes form the next hop's frontier). A node with more neighbours than the fan-out gets
that many positions drawn with replacement, then deduplicated, so it may get slightly fewer. Where
pyg-lib or torch-sparse is installed, the compiled routine is used.

    loader = LinkNeighborLoader(data, num_neighbors=[10, 5], edge_label_index=..., batch_size=1024,
                                neighbor_sampler=TorchNeighborSampler(data, num_neighbors=[10, 5]))
"""

from __future__ import annotations

import torch
import torch_geometric.typing
from torch import Tensor
from torch_geometric.sampler import HeteroSamplerOutput, NeighborSampler
from torch_geometric.sampler.base import SubgraphType


class TorchNeighborSampler(NeighborSampler):
    """`NeighborSampler` with a plain-torch heterogeneous sampling step (see the module docstring)."""

    def _sample(self, seed, seed_time=None, **kwargs):
        compiled = torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE
        if compiled or not isinstance(seed, dict):
            return super()._sample(seed, seed_time, **kwargs)
        if seed_time is not None or self.disjoint or self.subgraph_type == SubgraphType.induced:
            raise NotImplementedError("TorchNeighborSampler samples directional, non-temporal, non-disjoint subgraphs")
        if self.sample_direction != "forward":
            raise NotImplementedError("TorchNeighborSampler samples forward only")
        return _hetero_sample(
            self.node_types, self.edge_types, self.num_nodes, self.colptr_dict, self.row_dict,
            self.to_rel_type, self.num_neighbors.get_mapped_values(self.edge_types), seed,
        )


class _NodeSet:
    """The sampled nodes of one type: global ids in the order reached, and global -> local."""

    def __init__(self, num_nodes: int):
        self.local = torch.full((num_nodes,), -1, dtype=torch.long)
        self.parts: list[Tensor] = []
        self.count = 0

    def add(self, ids: Tensor) -> Tensor:
        """Adds the ids not seen yet (in first-seen order) and returns them."""
        fresh = ids[self.local[ids] < 0]
        if fresh.numel():
            # unique keeps the first occurrence's position once sorted by it.
            values, inverse = torch.unique(fresh, return_inverse=True)
            first = torch.full((values.numel(),), fresh.numel(), dtype=torch.long).scatter_reduce_(
                0, inverse, torch.arange(fresh.numel()), reduce="amin")
            fresh = values[torch.argsort(first)]
            self.local[fresh] = torch.arange(self.count, self.count + fresh.numel())
            self.count += fresh.numel()
            self.parts.append(fresh)
        return fresh

    def ids(self) -> Tensor:
        return torch.cat(self.parts) if self.parts else torch.empty(0, dtype=torch.long)


def _sample_positions(colptr: Tensor, dst: Tensor, fanout: int) -> tuple[Tensor, Tensor]:
    """(position in the CSC row array, index into `dst`) of the sampled in-edges of each `dst` node.

    `dst` holds distinct nodes, so their CSC ranges are disjoint and a position has one owner.
    """
    start = colptr[dst]
    degree = colptr[dst + 1] - start
    small = degree <= fanout if fanout >= 0 else torch.ones_like(degree, dtype=torch.bool)
    counts = torch.where(small, degree, 0)
    owners_small = torch.repeat_interleave(counts)
    first = torch.cumsum(counts, 0) - counts
    positions_small = start[owners_small] + torch.arange(owners_small.numel()) - first[owners_small]
    big = (~small).nonzero().squeeze(1)
    if big.numel() == 0:
        return positions_small, owners_small
    draws = start[big].unsqueeze(1) + (torch.rand(big.numel(), fanout) * degree[big].unsqueeze(1)).long()
    positions_big, inverse = torch.unique(draws.flatten(), return_inverse=True)
    owners_big = torch.empty_like(positions_big).scatter_(0, inverse, big.repeat_interleave(fanout))
    return torch.cat([positions_small, positions_big]), torch.cat([owners_small, owners_big])


def _hetero_sample(node_types, edge_types, num_nodes, colptr_dict, row_dict, to_rel_type, fanouts, seed):
    nodes = {t: _NodeSet(num_nodes[t]) for t in node_types}
    frontier = {t: nodes[t].add(ids.long()) for t, ids in seed.items()}
    rows: dict[tuple, list[Tensor]] = {e: [] for e in edge_types}
    cols: dict[tuple, list[Tensor]] = {e: [] for e in edge_types}
    edges: dict[tuple, list[Tensor]] = {e: [] for e in edge_types}
    num_hops = max((len(v) for v in fanouts.values()), default=0)
    for hop in range(num_hops):
        reached: dict[str, list[Tensor]] = {t: [] for t in node_types}
        for edge_type in edge_types:
            source, _, target = edge_type
            rel = to_rel_type[edge_type]
            fanout = fanouts[rel][hop]
            dst = frontier.get(target)
            if fanout == 0 or dst is None or dst.numel() == 0:
                continue
            positions, owners = _sample_positions(colptr_dict[rel], dst, fanout)
            src = row_dict[rel][positions]
            reached[source].append(nodes[source].add(src))
            rows[edge_type].append(nodes[source].local[src])
            cols[edge_type].append(nodes[target].local[dst[owners]])
            edges[edge_type].append(positions)
        frontier = {t: torch.cat(parts) for t, parts in reached.items() if parts}

    def joined(parts: dict[tuple, list[Tensor]]) -> dict[tuple, Tensor]:
        return {e: torch.cat(p) if p else torch.empty(0, dtype=torch.long) for e, p in parts.items()}

    return HeteroSamplerOutput(
        node={t: nodes[t].ids() for t in node_types},
        row=joined(rows),
        col=joined(cols),
        edge=joined(edges),
        batch=None,
    )
