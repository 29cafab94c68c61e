"""`recserve train <model>` and `recserve evaluate <model>`: one protocol (pipelines/protocol.py) for
every model.

Each trainer measures its model on the held-out test period, then publishes an artifact fitted on all
events, so serving uses the freshest data (fusion, stacked on the others' candidate lists, publishes the
ranker trained on the validation period: pipelines/fusion.py). Artifacts that carry embeddings (`embeddings.pt`) are synced
to the vector store under their version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graph_builders.edge_weights import EdgeWeights
from models.item_index import ItemIndex
from models.popularity import PopularityModel
from pipelines.content import train_content_artifact
from pipelines.embedding_sync import sync_artifact_embeddings
from pipelines.fusion import train_fusion_artifact
from pipelines.hgt import train_hgt_artifact
from pipelines.lightgcn import train_lightgcn_artifact
from pipelines.tgn import train_tgn_artifact
from pipelines.protocol import RankingProtocol, TrainingData, baseline_metrics, data_window, popularity_scores
from pipelines.reports import write_report
from stores.artifacts import ArtifactStore, Manifest
from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

Trainer = Callable[[TrainingData, ArtifactStore, dict[str, Any]], Manifest]


def train_popularity(data: TrainingData, artifacts: ArtifactStore, overrides: dict[str, Any]) -> Manifest:
    if overrides:
        raise ValueError(f"popularity takes no settings, got {sorted(overrides)}")
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


MODELS: dict[str, Trainer] = {
    "popularity": train_popularity,
    "lightgcn": train_lightgcn_artifact,
    "tgn": train_tgn_artifact,
    "hgt": train_hgt_artifact,
    "content": train_content_artifact,
    "fusion": train_fusion_artifact,
}
# Fusion last: it is stacked on the others' candidate lists (it fits its own copies of them).
DEMO_MODELS = ["popularity", "lightgcn", "tgn", "hgt", "content", "fusion"]
# Demo training stays within a few minutes on a 2-core CPU.
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {
    "lightgcn": {"time_budget_s": 60.0, "max_epochs": 40},
    "tgn": {"time_budget_s": 60.0, "max_epochs": 10, "batch_size": 1000},
    # HGT: two epochs of large batches, no epoch selection (each evaluation is a full-graph pass).
    "hgt": {"max_epochs": 2, "batch_size": 2048, "validation_fraction": 0.0},
    # Fusion fits its own copy of every source twice (stages A and B): small, short fits, about 80 s in all.
    "fusion": {
        "validation_fraction": 0.0,
        "lightgcn": {"time_budget_s": 8.0, "max_epochs": 40},
        "hgt": {"max_epochs": 1, "batch_size": 4096},
        "tgn": {"max_epochs": 1, "batch_size": 2000, "memory_dim": 32, "time_dim": 16, "embedding_dim": 32},
        "training": {"max_epochs": 30},
    },
}


def train_model(model: str, settings: Settings, overrides: dict[str, Any] | None = None) -> Manifest:
    started = time.perf_counter()
    data = TrainingData.load(settings)
    artifacts = ArtifactStore(settings.artifacts_dir, settings.namespace)
    manifest = MODELS[model](data, artifacts, overrides or {})
    sync_artifact_embeddings(artifacts.resolve(model, manifest.version), manifest, settings, data.items)
    log.info("trained %s %s in %.1f s", model, manifest.version, time.perf_counter() - started)
    return manifest


def sync_model(model: str, settings: Settings, version: str = "current") -> dict[str, int]:
    """`recserve sync`: an artifact's vectors into the vector store again, e.g. a new Qdrant server's."""
    artifacts = ArtifactStore(settings.artifacts_dir, settings.namespace)
    folder = artifacts.resolve(model, version)
    catalog = EventStore(Database.from_settings(settings)).items_frame()
    counts = sync_artifact_embeddings(folder, artifacts.manifest(model, folder.name), settings, catalog)
    if not counts:
        raise ValueError(f"{model} {folder.name} has no embeddings to sync")
    return counts


def evaluate_model(model: str, settings: Settings, out_dir: Path | None = None) -> Path:
    """A Markdown report with plots: the current artifact's held-out metrics next to the baselines,
    recomputed now on the same split."""
    manifest = ArtifactStore(settings.artifacts_dir, settings.namespace).manifest(model)
    data = TrainingData.load(settings)
    if manifest.config.get("split") != data.split_name:
        raise RuntimeError(f"{model} {manifest.version} was evaluated on split {manifest.config.get('split')!r}, "
                           f"the namespace now splits as {data.split_name!r}; retrain it first")
    metrics = {k: v for k, v in manifest.metrics.items() if k not in ("history", "baselines")}
    # Next-interaction models carry their baselines, measured on the same streamed cases.
    baselines = manifest.metrics.get("baselines") or baseline_metrics(data, RankingProtocol.build(data, EdgeWeights()))
    results = {**baselines, model: metrics}
    out_dir = out_dir or REPO_ROOT / "reports" / settings.namespace / model
    return write_report(
        title=f"{model} on {settings.namespace}",
        facts={
            "model version": manifest.version,
            "trained at": manifest.created_at.isoformat(),
            "split": data.split_name,
            "events (train / validation / test)": f"{len(data.split.train):,} / {len(data.split.validation):,} / {len(data.split.test):,}",
            "protocol": "full ranking over all items, earlier items masked, returning users' new test items",
            **manifest.config.get("summary", {}),
        },
        results=results,
        curves=manifest.metrics.get("history"),
        out_dir=out_dir,
    )
