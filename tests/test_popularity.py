"""Popularity trained end to end through the pipeline: store -> split -> artifact -> report."""

import pytest
import torch

from models.item_index import ItemIndex
from models.popularity import PopularityModel
from pipelines.loading import load_into_store
from pipelines.protocol import TrainingData
from pipelines.training import evaluate_model, train_model
from stores.artifacts import ArtifactStore
from stores.settings import Settings


@pytest.fixture
def trained(db, tmp_path):
    settings = Settings(database_url=db.dsn, namespace=db.namespace, artifacts_dir=tmp_path / "artifacts")
    load_into_store("demo", settings, users=400, items=150, events=30_000, seed=7)
    manifest = train_model("popularity", settings)
    return settings, manifest


def test_artifact_is_versioned_and_round_trips(trained):
    settings, manifest = trained
    artifacts = ArtifactStore(settings.artifacts_dir, settings.namespace)
    assert artifacts.current_version("popularity") == manifest.version
    folder = artifacts.resolve("popularity")
    model, items = PopularityModel.load(folder), ItemIndex.load(folder)
    assert len(model.item_ids) == len(items) == manifest.item_count
    assert torch.isclose(model.overall.sum(), torch.tensor(1.0))
    assert manifest.data_window["events"] > 0 and manifest.config["split"]
    # A second training run is a new version beside the first, and becomes current.
    second = train_model("popularity", settings)
    assert artifacts.versions("popularity") == sorted([manifest.version, second.version])
    assert artifacts.current_version("popularity") == second.version


def test_held_out_metrics_beat_random(trained):
    settings, manifest = trained
    data = TrainingData.load(settings)
    assert data.split.train["ts"].max() < data.split.test["ts"].min()
    num_items = manifest.item_count
    # Random ranking hits about K / num_items of a user's test items; popularity must do clearly better.
    assert manifest.metrics["recall@20"] > 2 * 20 / num_items
    assert 0 < manifest.metrics["ndcg@20"] <= 1


def test_device_scores_differ_from_overall(trained):
    settings, _ = trained
    folder = ArtifactStore(settings.artifacts_dir, settings.namespace).resolve("popularity")
    model = PopularityModel.load(folder)
    assert model.by_device, "the demo data has devices"
    top = lambda scores: set(torch.topk(scores, 10).indices.tolist())  # noqa: E731
    assert any(top(scores) != top(model.overall) for scores in model.by_device.values())
    assert model.scores("unknown-device") is model.overall


def test_evaluate_writes_report_with_plots(trained, tmp_path):
    settings, manifest = trained
    report = evaluate_model("popularity", settings, out_dir=tmp_path / "report")
    text = report.read_text()
    assert "recall@20" in text and manifest.version in text
    png = tmp_path / "report" / "metrics.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
