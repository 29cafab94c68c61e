import numpy as np
import pytest

from stores.settings import Settings
from stores.vectors import VectorStore, point_id


@pytest.fixture
def store(tmp_path):
    with VectorStore.from_settings(Settings(state_dir=tmp_path, qdrant_url=None)) as vector_store:
        yield vector_store


def embeddings(n: int, dim: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray]:
    return [f"i{j}" for j in range(n)], np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_sync_then_get_vector_round_trips(store):
    ids, vectors = embeddings(50)
    summary = store.sync_embeddings("demo", "lightgcn", "v1", "items", ids, vectors, batch_size=16, progress=False)
    assert (summary.count, summary.version, summary.collection) == (50, "v1", "demo__lightgcn__items")
    for j in (0, 17, 49):
        np.testing.assert_array_equal(store.get_vector("demo", "lightgcn", "items", ids[j]), vectors[j])
    assert store.get_vector("demo", "lightgcn", "items", "unknown") is None
    assert store.get_vector("demo", "lightgcn", "users", "i0") is None  # nothing synced for users
    assert store.current_version("demo", "lightgcn", "items") == "v1"


def test_search_ranks_by_dot_product(store):
    ids, vectors = embeddings(200, dim=16)
    store.sync_embeddings("demo", "lightgcn", "v1", "items", ids, vectors, progress=False)
    query = np.random.default_rng(1).normal(size=16).astype(np.float32)
    scores = vectors @ query
    best = np.argsort(-scores)

    hits = store.search("demo", "lightgcn", "items", query, k=10)
    assert [i for i, _ in hits] == [ids[j] for j in best[:10]]
    np.testing.assert_allclose([s for _, s in hits], scores[best[:10]], rtol=1e-5)

    excluded = [ids[j] for j in best[:3]]
    hits = store.search("demo", "lightgcn", "items", query, k=5, exclude_ids=excluded)
    assert [i for i, _ in hits] == [ids[j] for j in best[3:8]]
    assert store.search("demo", "hgt", "items", query, k=5) == []


def test_new_version_replaces_old(store, tmp_path):
    ids, vectors = embeddings(30)
    store.sync_embeddings("demo", "lightgcn", "v1", "users", ids, vectors, progress=False)
    _, new_vectors = embeddings(20, seed=1)
    new_ids = [f"u{j}" for j in range(20)]
    store.sync_embeddings("demo", "lightgcn", "v2", "users", new_ids, new_vectors, progress=False)

    assert store.current_version("demo", "lightgcn", "users") == "v2"
    assert store.get_vector("demo", "lightgcn", "users", "i0") is None
    np.testing.assert_array_equal(store.get_vector("demo", "lightgcn", "users", "u3"), new_vectors[3])
    names = {c.name for c in store.client.get_collections().collections}
    assert names == {"demo__lightgcn__users__v2"}
    with pytest.raises(ValueError, match="already current"):
        store.sync_embeddings("demo", "lightgcn", "v2", "users", new_ids, new_vectors, progress=False)

    # A reopened local store finds the alias and the vectors (and the file lock was released by close).
    assert not list(tmp_path.glob("qdrant/**/*-wal"))  # the bulk write mode was undone
    store.close()
    with VectorStore.from_settings(Settings(state_dir=tmp_path, qdrant_url=None)) as reopened:
        assert reopened.current_version("demo", "lightgcn", "users") == "v2"
        np.testing.assert_array_equal(reopened.get_vector("demo", "lightgcn", "users", "u19"), new_vectors[19])
        reopened.delete("demo", "lightgcn")
        assert reopened.current_version("demo", "lightgcn", "users") is None
        assert reopened.client.get_collections().collections == []


def test_mismatched_lengths_raise(store):
    ids, vectors = embeddings(5)
    with pytest.raises(ValueError, match="4 ids but 5 vectors"):
        store.sync_embeddings("demo", "lightgcn", "v1", "items", ids[:4], vectors, progress=False)
    with pytest.raises(ValueError, match="5 ids but 2 payloads"):
        store.sync_embeddings("demo", "lightgcn", "v1", "items", ids, vectors, payloads=[{}, {}], progress=False)
    with pytest.raises(ValueError, match="duplicate"):
        store.sync_embeddings("demo", "lightgcn", "v1", "items", ["a"] * 5, vectors, progress=False)
    assert store.client.get_collections().collections == []


def test_payloads_keep_id_and_version(store):
    ids, vectors = embeddings(3)
    payloads = [{"title": f"t{j}", "id": "overridden"} for j in range(3)]
    store.sync_embeddings("demo", "content", "v7", "items", ids, vectors, payloads=payloads, progress=False)
    (point,) = store.client.retrieve("demo__content__items", ids=[point_id("i1")], with_payload=True)
    assert point.payload == {"title": "t1", "id": "i1", "version": "v7"}


def test_point_ids_are_stable_uuids():
    assert point_id("i1") == point_id("i1") != point_id("i2")
    # Pinned: a change here orphans every vector already stored.
    assert point_id("i1") == "50a1cbdc-01ba-5ad2-8e79-07f7ca8a80ea"
