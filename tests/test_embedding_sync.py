"""`recserve train` syncs every model with embeddings (LightGCN, HGT, TGN, content) to the vector store: exactly
the artifact's users and items, the same vectors, searchable with the catalogue's payload, under one version."""

from __future__ import annotations

import numpy as np
import pytest

from models.embeddings import UserItemEmbeddings
from models.item_index import ItemIndex
from pipelines.training import sync_model, train_model
from stores.artifacts import ArtifactStore, read_json
from stores.vectors import VectorStore
from tests.serve_process import demo_namespace

QUICK = {
    "lightgcn": {"max_epochs": 2, "validation_fraction": 0.0},
    "hgt": {"max_epochs": 1, "batch_size": 2048, "validation_fraction": 0.0},
    "tgn": {"max_epochs": 1, "memory_dim": 16, "time_dim": 8, "embedding_dim": 16},
    "content": {"progress": False},
}


@pytest.fixture(scope="module")
def trained(dsn, tmp_path_factory):
    with demo_namespace(dsn, tmp_path_factory, "t_sync", seed=3) as (settings, store):
        manifests = {model: train_model(model, settings, overrides) for model, overrides in QUICK.items()}
        yield settings, store, manifests


@pytest.mark.parametrize("model", list(QUICK))
def test_a_sync_writes_exactly_the_models_users_and_items(trained, model):
    settings, _, manifests = trained
    folder = ArtifactStore(settings.artifacts_dir, settings.namespace).resolve(model, manifests[model].version)
    item_ids = ItemIndex.load(folder).item_ids
    user_ids = read_json(folder / "users.json")["user_ids"]
    embeddings = UserItemEmbeddings.load(folder)
    with VectorStore.from_settings(settings) as store:
        for kind, ids in (("items", item_ids), ("users", user_ids)):
            assert store.current_version(settings.namespace, model, kind) == manifests[model].version
            assert store.count(settings.namespace, model, kind) == len(ids) > 0
        for row in (0, len(item_ids) // 2, len(item_ids) - 1):
            stored = store.get_vector(settings.namespace, model, "items", item_ids[row])
            np.testing.assert_allclose(stored, embeddings.items[row].numpy(), rtol=1e-6)
        stored = store.get_vector(settings.namespace, model, "users", user_ids[-1])
        np.testing.assert_allclose(stored, embeddings.users[-1].numpy(), rtol=1e-6)


def test_item_points_carry_the_catalogue_payload_for_filtered_search(trained):
    settings, store, _ = trained
    catalogue = store.items_frame().set_index("item_id")
    category = catalogue["category"].value_counts().index[-1]
    with VectorStore.from_settings(settings) as vectors:
        query = vectors.get_vector(settings.namespace, "content", "items", catalogue.index[0])
        hits = vectors.search(settings.namespace, "content", "items", query, k=200, category=category)
    assert [i for i, _ in hits] and {catalogue.loc[i, "category"] for i, _ in hits} == {category}
    assert len(hits) == int((catalogue["category"] == category).sum())


def test_recserve_sync_writes_a_version_again_into_an_empty_store(trained, tmp_path):
    settings, _, manifests = trained
    elsewhere = settings.model_copy(update={"state_dir": tmp_path})  # a new, empty store
    counts = sync_model("lightgcn", elsewhere)
    with VectorStore.from_settings(elsewhere) as store:
        assert store.current_version(settings.namespace, "lightgcn", "items") == manifests["lightgcn"].version
        assert store.count(settings.namespace, "lightgcn", "items") == counts["items"]
    with pytest.raises(ValueError, match="already current"):
        sync_model("lightgcn", elsewhere)
