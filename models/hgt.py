"""HGT recommender: "Heterogeneous Graph Transformer" (Hu, Dong, Wang, Sun, WWW 2020,
https://arxiv.org/abs/2003.01332), built on PyG's `HGTConv`, scoring user-item links.

Every node type (user, item, provider, badge, category, device, attribute, promotion) has a learned
ID embedding H^(0). Each layer is one `HGTConv`: for a target node t and its in-edges from s with
relation r = (tau(s), phi(e), tau(t)) (eq. 3-5),

    ATT(s, e, t)  = softmax_s( (K(s) W_att_r Q(t)^T) * mu_r / sqrt(d) )        per head
    MSG(s, e, t)  = V(s) W_msg_r
    H^(l)[t]      = sigmoid(beta) * A_tau(t)( gelu( sum_s ATT * MSG ) ) + (1 - sigmoid(beta)) * H^(l-1)[t]

with K, Q, V, A linear maps per node type and W_att, W_msg, mu per relation. As in LightGCN, a node's
representation is the mean of its layers, and the score of a link is their dot product:

    Z[v] = mean_{l=0..L} H^(l)[v]          y(u, i) = Z[u] . Z[i]

The mean keeps each known node's own ID embedding in its representation; with the last layer alone,
users trained on the generated demo data all came out in nearly the same direction, and every user got
the popular items.

Cold start. Each node type has one extra embedding row, the "unseen" token: the input of a node that has
no trained ID embedding (a new user, a new item). Its output then comes only from the layers, from
what it links to: a new user's device, attributes and first items; a new item's provider, badges and
category. Training replaces the ID embedding of a share of users and items with that token and cuts
their interactions (`models/hgt_training.py`), so the layers learn to serve such nodes.

Serving keeps the full-graph outputs of every layer (`layer_outputs`). A new node's layer-l output
then needs only its neighbours' layer-(l-1) outputs (`embed_new_node`): L tiny `HGTConv` calls, no
pass over the graph. The new node's effect on its neighbours is left out, as it would be by a graph
that has not been retrained.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import HGTConv
from torch_geometric.typing import EdgeType, Metadata, NodeType

LayerOutputs = list[dict[NodeType, Tensor]]  # [H^(0), ..., H^(L)], each node type -> [N, d]


class HGTRecommender(torch.nn.Module):
    """HGT over a heterogeneous graph with "user" and "item" node types, scoring user-item links.

    Args:
        num_nodes: nodes per node type (the trained ID embeddings).
        metadata: the graph's (node types, edge types), as `HeteroData.metadata()`.
        hidden_channels: size of every node representation.
        num_layers: number of `HGTConv` layers L (hops a representation sees).
        heads: attention heads per layer (must divide hidden_channels).
        dropout: dropout on each layer's output while training.
    """

    def __init__(
        self,
        num_nodes: Mapping[NodeType, int],
        metadata: Metadata,
        hidden_channels: int = 64,
        num_layers: int = 2,
        heads: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_nodes = dict(num_nodes)
        self.metadata = metadata
        self.dropout = dropout
        self.embeddings = torch.nn.ModuleDict(
            {node_type: torch.nn.Embedding(self.num_nodes[node_type] + 1, hidden_channels) for node_type in metadata[0]}
        )
        for embedding in self.embeddings.values():
            torch.nn.init.normal_(embedding.weight, std=0.1)
        self.convs = torch.nn.ModuleList(
            HGTConv(hidden_channels, hidden_channels, metadata, heads) for _ in range(num_layers)
        )

    def unseen(self, node_type: NodeType) -> int:
        """Row of the "unseen" token in `embeddings[node_type]`."""
        return self.num_nodes[node_type]

    def inputs(self, n_id: Mapping[NodeType, Tensor], unseen: Mapping[NodeType, Tensor] | None = None) -> dict[NodeType, Tensor]:
        """H^(0) of the given nodes; those flagged in `unseen` (bool per node) get the unseen token."""
        x = {}
        for node_type, ids in n_id.items():
            ids = ids.clamp(max=self.unseen(node_type))
            if unseen is not None and node_type in unseen:
                ids = torch.where(unseen[node_type], self.unseen(node_type), ids)
            x[node_type] = self.embeddings[node_type](ids)
        return x

    def forward(
        self,
        n_id: Mapping[NodeType, Tensor],
        edge_index: Mapping[EdgeType, Tensor],
        unseen: Mapping[NodeType, Tensor] | None = None,
    ) -> dict[NodeType, Tensor]:
        """Z of the nodes `n_id` (global ids per type) over the (sub)graph `edge_index` (local ids)."""
        return combine(self.propagate(self.inputs(n_id, unseen), edge_index))

    def in_metadata_order(self, edges: Mapping[EdgeType, Tensor]) -> dict[EdgeType, Tensor]:
        """`HGTConv` builds its per-relation weight index assuming the edge types come in metadata
        order (its `HeteroLinear` is created with is_sorted=True); in any other order it silently
        applies the wrong relation's weights."""
        return {e: edges[e] for e in self.metadata[1] if e in edges}

    def propagate(self, x: dict[NodeType, Tensor], edge_index: Mapping[EdgeType, Tensor]) -> LayerOutputs:
        outputs = [x]
        edge_index = self.in_metadata_order(edge_index)
        for conv in self.convs:
            out = conv(x, edge_index)
            # A node type that received no message this layer keeps its representation.
            x = {t: F.dropout(out[t], self.dropout, self.training) if out.get(t) is not None else x[t] for t in x}
            outputs.append(x)
        return outputs

    @torch.no_grad()
    def layer_outputs(self, edge_index: Mapping[EdgeType, Tensor]) -> LayerOutputs:
        """Every node's output of every layer over the whole graph (eval mode)."""
        device = next(self.parameters()).device
        n_id = {t: torch.arange(n, device=device) for t, n in self.num_nodes.items()}
        return self.propagate(self.inputs(n_id), {e: i.to(device) for e, i in edge_index.items()})

    @torch.no_grad()
    def embed_new_nodes(
        self, node_type: NodeType, count: int, edges: Mapping[EdgeType, tuple[Tensor, Tensor]], layers: LayerOutputs
    ) -> Tensor:
        """Z of `count` nodes absent from the graph: edges[(source, relation, node_type)] = (source
        indices into `layers`, new node 0..count-1) links each new node to the nodes it comes from."""
        edges = self.in_metadata_order(edges)
        x = self.embeddings[node_type].weight[self.unseen(node_type)].expand(count, -1)
        own = [x]
        for conv, previous in zip(self.convs, layers[:-1]):
            # Each source type's inputs: its neighbours in edge-type order, after the new nodes
            # themselves when the source type is the new nodes' own type.
            inputs = {node_type: x}
            offsets = {node_type: count}
            edge_index = {}
            for edge_type, (sources, targets) in edges.items():
                source_type = edge_type[0]
                start = offsets.get(source_type, 0)
                rows = previous[source_type][sources]
                inputs[source_type] = torch.cat([inputs[source_type], rows]) if source_type in inputs else rows
                offsets[source_type] = start + sources.numel()
                positions = torch.arange(start, start + sources.numel(), device=sources.device)
                edge_index[edge_type] = torch.stack([positions, targets])
            x = conv(inputs, edge_index)[node_type][:count]
            own.append(x)
        return torch.stack(own).mean(0)

    def embed_new_node(self, node_type: NodeType, neighbours: Mapping[EdgeType, Tensor], layers: LayerOutputs) -> Tensor:
        """Z of one node absent from the graph, linked by each edge type (source, relation, node_type)
        in `neighbours` to those source nodes (indices into `layers`)."""
        edges = {e: (ids, torch.zeros_like(ids)) for e, ids in neighbours.items()}
        return self.embed_new_nodes(node_type, 1, edges, layers)[0]


def combine(layers: LayerOutputs) -> dict[NodeType, Tensor]:
    """Z: each node type's mean over the layers."""
    return {t: torch.stack([layer[t] for layer in layers]).mean(0) for t in layers[0]}
