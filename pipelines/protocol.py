"""The offline protocol every model is trained and measured under.

The data comes from the namespace's event store. The split is the dataset's published one when it
has one (Gowalla, YOOCHOOSE), otherwise a temporal split. Offline metrics are full-ranking metrics
on the test period for returning users, with their earlier items masked. The simple baselines
(popularity, item-kNN) are measured in the same protocol and run as the model under evaluation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from graph_builders.bipartite import BipartiteGraph, pairs_csr
from graph_builders.edge_weights import EdgeWeights
from graph_builders.splits import TemporalSplit, evaluation_targets, preset_split, temporal_split
from models.evaluation import evaluate_full_ranking
from models.item_knn import ItemKNN
from models.popularity import PopularityModel
from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import Settings

log = logging.getLogger(__name__)

EVAL_KS = (10, 20, 50)


@dataclass
class TrainingData:
    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    split: TemporalSplit
    split_name: str
    through_event_id: int = 0  # every stored event up to this id is in `events` (where the log stood)

    @classmethod
    def load(cls, settings: Settings) -> TrainingData:
        store = EventStore(Database.from_settings(settings))
        started = time.perf_counter()
        through = store.max_event_id()
        events, items, users = store.events_frame(through_event_id=through), store.items_frame(), store.users_frame()
        if events.empty:
            raise RuntimeError(f"namespace {settings.namespace!r} has no events; run `recserve load` first")
        preset = store.preset_split()
        split = preset_split(events, preset) if preset else temporal_split(events)
        name = preset.description if preset else "temporal 70/10/20"
        log.info("read %d events, %d items in %.1f s; split: %s", len(events), len(items), time.perf_counter() - started, name)
        return cls(events, items, users, split, name, through)

    @property
    def history(self) -> pd.DataFrame:
        """Everything before the test period (train + validation)."""
        return pd.concat([self.split.train, self.split.validation], ignore_index=True)


@dataclass
class RankingProtocol:
    """Returning users' test items against a graph of everything they did before the test period."""

    graph: BipartiteGraph
    test: torch.Tensor  # users x items CSR of held-out positives

    @classmethod
    def build(cls, data: TrainingData, weights: EdgeWeights) -> RankingProtocol:
        graph = BipartiteGraph.from_events(data.history, data.items, weights)
        targets = evaluation_targets(data.history, data.split.test)
        return cls(graph, pairs_csr(targets, graph.user_index, graph.item_index))

    def evaluate(self, score_fn: Callable[[torch.Tensor], torch.Tensor], ks=EVAL_KS) -> dict[str, float]:
        return evaluate_full_ranking(score_fn, self.graph.seen, self.test, ks=ks).as_dict()


def data_window(events: pd.DataFrame) -> dict[str, Any]:
    return {
        "first_event": events["ts"].min().isoformat(),
        "last_event": events["ts"].max().isoformat(),
        "events": len(events),
    }


def popularity_scores(model: PopularityModel) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda users: model.overall.expand(len(users), -1)


def baseline_metrics(data: TrainingData, protocol: RankingProtocol) -> dict[str, dict[str, float]]:
    """Popularity and item-kNN, fitted on the protocol's history and measured like any model."""
    popularity = PopularityModel.fit(data.history, protocol.graph.item_ids, EdgeWeights())
    item_knn = ItemKNN.fit(protocol.graph.user_item_csr())
    return {
        "popularity": protocol.evaluate(popularity_scores(popularity)),
        "item-knn": protocol.evaluate(item_knn.scores),
    }
