"""Events -> graphs: edge weights, the bipartite graph, the temporal stream, the heterogeneous graph, splits."""

from graph_builders.bipartite import BipartiteGraph, csr_from_indices, item_id_order, pairs_csr
from graph_builders.edge_weights import EdgeWeights, aggregate_interactions, event_weights, interaction_key
from graph_builders.heterogeneous import HeteroGraph, build_hetero_graph
from graph_builders.splits import (
    TemporalSplit,
    evaluation_targets,
    held_out_users_split,
    preset_split,
    temporal_split,
)
from graph_builders.temporal import (
    EVENT_TYPE_ORDER,
    MESSAGE_DIM,
    TemporalStream,
    build_temporal_stream,
    session_sequences,
)

__all__ = [
    "EVENT_TYPE_ORDER",
    "MESSAGE_DIM",
    "BipartiteGraph",
    "EdgeWeights",
    "HeteroGraph",
    "TemporalSplit",
    "TemporalStream",
    "aggregate_interactions",
    "build_hetero_graph",
    "build_temporal_stream",
    "csr_from_indices",
    "evaluation_targets",
    "event_weights",
    "held_out_users_split",
    "interaction_key",
    "item_id_order",
    "pairs_csr",
    "preset_split",
    "session_sequences",
    "temporal_split",
]
