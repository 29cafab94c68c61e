"""`recserve train hgt`: test metrics from a model selected on validation, then the served refit.

As for LightGCN (pipelines/lightgcn.py):
1. The heterogeneous graph (graph_builders/heterogeneous.py) holds everything before the test period;
   a seeded random `validation_fraction` of its user-item edges is held out (never a user's or an
   item's last edge) for early stopping on validation NDCG@20.
2. The selected model is measured on the test period (full ranking, earlier items masked), next to
   the same baselines as every model.
3. With `refit`, the served model is trained again on ALL events for the selected number of epochs.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import Field
from torch_geometric.data import HeteroData

from graph_builders.bipartite import csr_from_indices
from graph_builders.edge_weights import EdgeWeights
from graph_builders.heterogeneous import INTERACTS, HeteroGraph, build_hetero_graph
from graph_builders.splits import edge_holdout_mask
from models.evaluation import evaluate_full_ranking
from models.hgt import LayerOutputs, combine
from models.hgt_serving import HGTIndex
from models.hgt_training import REV_INTERACTS, HGTConfig, HGTTrainingResult, train_hgt
from models.item_index import ItemIndex
from pipelines.protocol import RankingProtocol, TrainingData, data_window
from pipelines.reports import curve_rows, selection_summary
from stores.artifacts import ArtifactStore, Manifest

log = logging.getLogger(__name__)

HYPERPARAMETERS = ("hidden_channels", "num_layers", "heads", "dropout")


class HGTOptions(HGTConfig):
    """`recserve train hgt --set KEY=VALUE` settings: the model's and the pipeline's."""

    validation_fraction: float = Field(default=0.1, ge=0, lt=1, description="0 = no early stopping")
    refit: bool = Field(default=True, description="serve a model refitted on all events")


def holdout_interactions(graph: HeteroGraph, fraction: float, seed: int) -> tuple[HeteroData, torch.Tensor, torch.Tensor]:
    """(graph without the held-out user-item edges, users x items CSR of the kept edges (the `seen`
    mask), users x items CSR of the held-out edges). Users and items keep at least one edge."""
    users, items = graph.data[INTERACTS].edge_index
    held = edge_holdout_mask(users, items, graph.num_nodes("user"), graph.num_nodes("item"), fraction, seed)
    fit = copy.copy(graph.data)
    fit[INTERACTS].edge_index = graph.data[INTERACTS].edge_index[:, ~held]
    fit[INTERACTS].edge_weight = graph.data[INTERACTS].edge_weight[~held]
    fit[REV_INTERACTS].edge_index = fit[INTERACTS].edge_index.flip(0)
    shape = (graph.num_nodes("user"), graph.num_nodes("item"))
    return fit, csr_from_indices(users[~held], items[~held], shape), csr_from_indices(users[held], items[held], shape)


def protocol_scores(layers: LayerOutputs, graph: HeteroGraph, protocol: RankingProtocol):
    """A full-ranking score function over the protocol's users (its own user order) and items."""
    rows = torch.tensor([graph.node_index["user"][user] for user in protocol.graph.user_ids], dtype=torch.long)
    final = combine(layers)
    users, items = final["user"], final["item"]
    return lambda batch: users[rows[batch]] @ items.T


def item_popularity(graph: HeteroGraph) -> torch.Tensor:
    items = graph.data[INTERACTS].edge_index[1]
    return torch.zeros(graph.num_nodes("item")).index_add_(0, items, graph.data[INTERACTS].edge_weight)


def item_badges(graph: HeteroGraph) -> list[list[str]]:
    badges: list[list[str]] = [[] for _ in range(graph.num_nodes("item"))]
    names = graph.node_ids["badge"]
    for item, badge in graph.data["item", "has_badge", "badge"].edge_index.t().tolist():
        badges[item].append(names[badge])
    return badges


def options_config(options: HGTOptions) -> HGTConfig:
    return HGTConfig.model_validate(options.model_dump(include=set(HGTConfig.model_fields)))


def fit_selected(graph: HeteroGraph, options: HGTOptions) -> HGTTrainingResult:
    """Train on `graph`, selecting the epoch on held-out edges when `validation_fraction` > 0."""
    if options.validation_fraction == 0:
        return train_hgt(graph.data, options_config(options))
    fit_data, seen, validation = holdout_interactions(graph, options.validation_fraction, options.seed)

    def evaluate(layers: LayerOutputs) -> dict[str, float]:
        final = combine(layers)
        users, items = final["user"], final["item"]
        return evaluate_full_ranking(lambda batch: users[batch] @ items.T, seen, validation, ks=(20,)).as_dict()

    return train_hgt(fit_data, options_config(options), evaluate)


def serving_index(graph: HeteroGraph, result: HGTTrainingResult, items: pd.DataFrame) -> HGTIndex:
    """What the trained model serves, in memory (as `HGTIndex.load` reads it back from an artifact)."""
    # On the trained model's device, as `HGTIndex.load(device=...)` puts them: a cold user's segment rows
    # are picked with indices on that device.
    device = result.layers[0]["item"].device
    return HGTIndex(
        model=result.model.eval(),
        layers=result.layers,
        node_index=graph.node_index,
        items=ItemIndex.from_items(graph.node_ids["item"], items),
        badges=item_badges(graph),
        popularity=item_popularity(graph).to(device),
        segment_items={t: shares.to(device) for t, shares in segment_item_shares(graph).items()},
    )


def segment_item_shares(graph: HeteroGraph, smoothing: float = 50.0) -> dict[str, torch.Tensor]:
    """P(item | segment) for each device and attribute node: the summed interaction weights of the
    segment's users, smoothed towards the overall (add-one) distribution by `smoothing` pseudo-weight."""
    weights = graph.data[INTERACTS].edge_weight
    interactions = torch.sparse_coo_tensor(
        graph.data[INTERACTS].edge_index, weights, (graph.num_nodes("user"), graph.num_nodes("item")))
    # Add-one on the overall distribution: an item nobody has played yet keeps a finite score.
    overall = (item_popularity(graph) + 1) / (weights.sum() + graph.num_nodes("item"))
    shares = {}
    for node_type, relation in (("device", "uses"), ("attribute", "has_attribute")):
        members, segments = graph.data["user", relation, node_type].edge_index
        membership = torch.sparse_coo_tensor(
            torch.stack([segments, members]), torch.ones(members.numel()),
            (graph.num_nodes(node_type), graph.num_nodes("user")))
        mass = torch.sparse.mm(membership, interactions).to_dense()
        shares[node_type] = (mass + smoothing * overall) / (mass.sum(1, keepdim=True) + smoothing)
    return shares


def train_hgt_artifact(data: TrainingData, artifacts: ArtifactStore, overrides: dict[str, Any]) -> Manifest:
    options = HGTOptions.model_validate(overrides)
    weights = EdgeWeights()
    protocol = RankingProtocol.build(data, weights)
    graph = build_hetero_graph(data.history, data.items, data.users, weights)
    if graph.node_ids["item"] != protocol.graph.item_ids:
        raise RuntimeError("the heterogeneous and bipartite graphs order items differently")
    selected = fit_selected(graph, options)
    metrics = protocol.evaluate(protocol_scores(selected.layers, graph, protocol))
    log.info("hgt: best epoch %d (%s); test recall@20 %.4f ndcg@20 %.4f",
             selected.best_epoch, selected.stopped_because, metrics["recall@20"], metrics["ndcg@20"])

    served_graph, served = graph, selected
    if options.refit:
        served_graph = build_hetero_graph(data.events, data.items, data.users, weights)
        refit = options_config(options).model_copy(update={"max_epochs": max(selected.best_epoch, 1), "time_budget_s": None})
        served = train_hgt(served_graph.data, refit)
    return publish(artifacts, data, options, served_graph, served, selected, metrics)


def publish(artifacts: ArtifactStore, data: TrainingData, options: HGTOptions, graph: HeteroGraph,
            served: HGTTrainingResult, selected: HGTTrainingResult, metrics: dict[str, float]) -> Manifest:
    index = serving_index(graph, served, data.items)

    def build(folder: Path) -> None:
        index.save(folder, options.model_dump(include=set(HYPERPARAMETERS)))

    history = curve_rows(selected.history)
    return artifacts.publish(
        "hgt",
        build,
        {
            "data_window": data_window(data.events),
            "config": {
                **options.model_dump(),
                "split": data.split_name,
                "summary": {
                    **selection_summary(selected, served, options.refit),
                    "nodes": {t: len(ids) for t, ids in graph.node_ids.items()},
                },
            },
            "metrics": {**metrics, "history": history},
            "item_count": len(index.items),
            "user_count": len(graph.node_ids["user"]),
        },
    )
