"""`recserve train lightgcn`: test metrics from a model selected on validation, then the served refit.

1. The protocol graph holds everything before the test period. A seeded random `validation_fraction`
   of its positive edges is held out (never a user's or an item's last edge) for early stopping on
   validation NDCG@20.
2. The selected model is measured on the test period (full ranking, earlier items masked).
3. With `refit`, the served model is trained again on ALL events for the selected number of epochs,
   so it knows the newest users and items; otherwise the selected model itself is served.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from graph_builders.bipartite import BipartiteGraph, csr_from_indices
from graph_builders.edge_weights import EdgeWeights
from graph_builders.splits import edge_holdout_mask
from models.evaluation import evaluate_full_ranking
from models.item_index import ItemIndex
from models.lightgcn_training import LightGCNConfig, TrainingResult, train_lightgcn
from pipelines.protocol import RankingProtocol, TrainingData, data_window
from pipelines.reports import curve_rows, selection_summary
from stores.artifacts import ArtifactStore, Manifest, write_json

log = logging.getLogger(__name__)


class LightGCNOptions(LightGCNConfig):
    """`recserve train lightgcn --set KEY=VALUE` settings: the model's and the pipeline's."""

    validation_fraction: float = Field(default=0.1, ge=0, lt=1, description="0 = no early stopping")
    refit: bool = Field(default=True, description="serve a model refitted on all events")


def holdout_edges(graph: BipartiteGraph, fraction: float, seed: int) -> tuple[BipartiteGraph, torch.Tensor]:
    """(graph without the held-out positive edges, users x items CSR of the held-out edges).

    Users and items keep at least one training edge, so every held-out edge can be scored.
    """
    users, items = graph.edge_index
    held = edge_holdout_mask(users, items, graph.num_users, graph.num_items, fraction, seed)
    kept = ~held
    negatives = graph.negative_edge_index
    seen_rows = torch.cat([users[kept], negatives[0]])
    seen_cols = torch.cat([items[kept], negatives[1]])
    shape = (graph.num_users, graph.num_items)
    fit = dataclasses.replace(
        graph,
        edge_index=graph.edge_index[:, kept],
        edge_weight=graph.edge_weight[kept],
        seen=csr_from_indices(seen_rows, seen_cols, shape),
    )
    return fit, csr_from_indices(users[held], items[held], shape)


def fit_on(graph: BipartiteGraph, config: LightGCNConfig, evaluate=None) -> TrainingResult:
    adjacency = graph.normalized_adjacency(config.edge_values)
    return train_lightgcn(adjacency, graph.edge_index, graph.num_users, graph.num_items, config, evaluate)


def write_lightgcn_artifact(folder: Path, config: LightGCNConfig, trained: TrainingResult, graph: BipartiteGraph,
                            items: ItemIndex) -> None:
    """The files of a LightGCN artifact, as `deployments.lightgcn.LoadedLightGCN.load` and the embedding sync read them."""
    torch.save({"config": config.model_dump(), "state_dict": trained.model.state_dict()}, folder / "model.pt")
    trained.embeddings.save(folder)
    write_json(folder / "users.json", {"user_ids": graph.user_ids})
    items.save(folder)


def train_lightgcn_artifact(data: TrainingData, artifacts: ArtifactStore, overrides: dict[str, Any]) -> Manifest:
    options = LightGCNOptions.model_validate(overrides)
    config = LightGCNConfig.model_validate(options.model_dump(include=set(LightGCNConfig.model_fields)))
    weights = EdgeWeights()
    protocol = RankingProtocol.build(data, weights)

    evaluate = None
    train_graph = protocol.graph
    if options.validation_fraction > 0:
        train_graph, validation = holdout_edges(protocol.graph, options.validation_fraction, options.seed)
        evaluate = lambda emb: evaluate_full_ranking(emb.scores, train_graph.seen, validation, ks=(20,)).as_dict()  # noqa: E731
    selected = fit_on(train_graph, config, evaluate)
    metrics = protocol.evaluate(selected.embeddings.scores)
    log.info("lightgcn: best epoch %d (%s); test recall@20 %.4f ndcg@20 %.4f",
             selected.best_epoch, selected.stopped_because, metrics["recall@20"], metrics["ndcg@20"])

    served_graph, served = protocol.graph, selected
    if options.refit:
        served_graph = BipartiteGraph.from_events(data.events, data.items, weights)
        refit_config = config.model_copy(update={"max_epochs": max(selected.best_epoch, 1), "time_budget_s": None})
        served = fit_on(served_graph, refit_config)
    items = ItemIndex.from_items(served_graph.item_ids, data.items)

    def build(folder: Path) -> None:
        write_lightgcn_artifact(folder, config, served, served_graph, items)

    history = curve_rows(selected.history)
    return artifacts.publish(
        "lightgcn",
        build,
        {
            "data_window": data_window(data.events),
            "config": {
                **options.model_dump(),
                "edge_weights": weights.model_dump(),
                "split": data.split_name,
                "summary": selection_summary(selected, served, options.refit),
            },
            "metrics": {**metrics, "history": history},
            "item_count": len(items),
            "user_count": served_graph.num_users,
        },
    )
