"""`recserve train <model>` and `recserve evaluate <model>`: one protocol for every model.

The data comes from the namespace's event store. The split is the dataset's published one when it
has one (Gowalla, YOOCHOOSE), otherwise a temporal split. Offline metrics are full-ranking metrics
on the test period for returning users, with their training items masked. The artifact that is
served is then fitted on all events, so serving uses the freshest data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from graph_builders.bipartite import BipartiteGraph, pairs_csr
from graph_builders.edge_weights import EdgeWeights
from graph_builders.splits import TemporalSplit, evaluation_targets, preset_split, temporal_split
from models.evaluation import evaluate_full_ranking
from models.item_index import ItemIndex
from models.popularity import PopularityModel
from pipelines.reports import write_report
from stores.artifacts import ArtifactStore, Manifest
from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

EVAL_KS = (10, 20, 50)


@dataclass
class TrainingData:
    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    split: TemporalSplit
    split_name: str

    @classmethod
    def load(cls, settings: Settings) -> TrainingData:
        store = EventStore(Database.from_settings(settings))
        started = time.perf_counter()
        events, items, users = store.events_frame(), store.items_frame(), store.users_frame()
        if events.empty:
            raise RuntimeError(f"namespace {settings.namespace!r} has no events; run `recserve load` first")
        preset = store.preset_split()
        split = preset_split(events, preset) if preset else temporal_split(events)
        name = preset.description if preset else "temporal 70/10/20"
        log.info("read %d events, %d items in %.1f s; split: %s", len(events), len(items), time.perf_counter() - started, name)
        return cls(events, items, users, split, name)

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


def train_popularity(data: TrainingData, artifacts: ArtifactStore) -> Manifest:
    weights = EdgeWeights()
    protocol = RankingProtocol.build(data, weights)
    held_out = PopularityModel.fit(data.history, protocol.graph.item_ids, weights)
    metrics = protocol.evaluate(popularity_scores(held_out))
    served = PopularityModel.fit(data.events, protocol.graph.item_ids, weights)
    items = ItemIndex.from_items(protocol.graph.item_ids, data.items)

    def build(folder: Path) -> None:
        served.save(folder)
        items.save(folder)

    return artifacts.publish(
        "popularity",
        build,
        {
            "data_window": data_window(data.events),
            "config": {"edge_weights": weights.model_dump(), "split": data.split_name},
            "metrics": metrics,
            "item_count": len(items),
            "user_count": int(data.events["user_id"].nunique()),
        },
    )


def baseline_metrics(data: TrainingData, protocol: RankingProtocol) -> dict[str, dict[str, float]]:
    """The simple baselines, measured in the same run and protocol as the model under evaluation."""
    weights = EdgeWeights()
    popularity = PopularityModel.fit(data.history, protocol.graph.item_ids, weights)
    return {"popularity": protocol.evaluate(popularity_scores(popularity))}


MODELS: dict[str, Callable[[TrainingData, ArtifactStore], Manifest]] = {"popularity": train_popularity}
DEMO_MODELS = ["popularity"]


def train_model(model: str, settings: Settings) -> Manifest:
    started = time.perf_counter()
    data = TrainingData.load(settings)
    manifest = MODELS[model](data, ArtifactStore(settings.artifacts_dir, settings.namespace))
    log.info("trained %s %s in %.1f s: %s", model, manifest.version, time.perf_counter() - started, manifest.metrics)
    return manifest


def evaluate_model(model: str, settings: Settings, out_dir: Path | None = None) -> Path:
    """A Markdown report with plots: the current artifact's held-out metrics next to the baselines,
    recomputed now on the same split."""
    manifest = ArtifactStore(settings.artifacts_dir, settings.namespace).manifest(model)
    data = TrainingData.load(settings)
    if manifest.config.get("split") != data.split_name:
        raise RuntimeError(f"{model} {manifest.version} was evaluated on split {manifest.config.get('split')!r}, "
                           f"the namespace now splits as {data.split_name!r}; retrain it first")
    results = {**baseline_metrics(data, RankingProtocol.build(data, EdgeWeights())), model: manifest.metrics}
    out_dir = out_dir or REPO_ROOT / "reports" / settings.namespace / model
    return write_report(
        title=f"{model} on {settings.namespace}",
        facts={
            "model version": manifest.version,
            "trained at": manifest.created_at.isoformat(),
            "split": data.split_name,
            "events (train / validation / test)": f"{len(data.split.train):,} / {len(data.split.validation):,} / {len(data.split.test):,}",
            "protocol": "full ranking over all items, training items masked, returning users' new test items",
        },
        results=results,
        curves=manifest.metrics.get("history"),
        out_dir=out_dir,
    )
