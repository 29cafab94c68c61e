"""LightGCN: the model against PyG's stock one, the sampler, training on generated data, the artifact."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn.models import LightGCN as PyGLightGCN

from deployments.lightgcn import LoadedLightGCN
from deployments.contract import Filters, ModelQuery
from graph_builders.bipartite import BipartiteGraph
from graph_builders.splits import temporal_split
from models.lightgcn import LightGCN
from models.lightgcn_training import LightGCNConfig, NegativeSampler, positive_sampler, train_lightgcn
from pipelines.datasets import read_dataset
from pipelines.lightgcn import holdout_edges, train_lightgcn_artifact
from pipelines.protocol import RankingProtocol, TrainingData, baseline_metrics
from graph_builders.edge_weights import EdgeWeights
from stores.artifacts import ArtifactStore


def small_graph(num_users: int = 6, num_items: int = 9, edges: int = 25, seed: int = 0) -> BipartiteGraph:
    import pandas as pd

    rng = torch.Generator().manual_seed(seed)
    users = torch.randint(num_users, (edges,), generator=rng)
    items = torch.randint(num_items, (edges,), generator=rng)
    events = pd.DataFrame({
        "user_id": [f"u{u}" for u in users.tolist()], "item_id": [f"i{i}" for i in items.tolist()],
        "session_id": None, "event_type": "click", "value": None, "device": None,
        "ts": pd.Timestamp("2024-01-01", tz="UTC"),
    })
    return BipartiteGraph.from_events(events, binary=True)


def test_propagation_and_gradients_match_pyg_stock_lightgcn():
    graph = small_graph()
    adjacency = graph.normalized_adjacency()
    ours = LightGCN(graph.num_users, graph.num_items, embedding_dim=8, num_layers=3)
    stock = PyGLightGCN(graph.num_users + graph.num_items, 8, 3)  # edge_index + gcn_norm on every call
    stock.embedding.weight.data.copy_(ours.ego.weight.data)
    users, items = ours(adjacency)
    edge_index = torch.cat([graph.edge_index, graph.edge_index.flip(0)], dim=1)
    edge_index[0, graph.edge_index.size(1):] += graph.num_users
    edge_index[1, : graph.edge_index.size(1)] += graph.num_users
    expected = stock.get_embedding(edge_index)
    torch.testing.assert_close(torch.cat([users, items]), expected)

    target = torch.randn_like(expected)
    ((torch.cat([users, items]) - target) ** 2).sum().backward()
    ((expected - target) ** 2).sum().backward()
    torch.testing.assert_close(ours.ego.weight.grad, stock.embedding.weight.grad)


def test_negative_sampler_never_returns_a_positive():
    graph = small_graph(num_users=4, num_items=6, edges=40)
    sampler = NegativeSampler(graph.edge_index, graph.num_items, torch.Generator().manual_seed(1))
    users = torch.arange(graph.num_users).repeat(50)
    negatives = sampler.sample(users, 3)
    positives = {tuple(e) for e in graph.edge_index.T.tolist()}
    degree = torch.bincount(graph.edge_index[0], minlength=graph.num_users)
    for user, row in zip(users.tolist(), negatives.tolist()):
        if degree[user] < graph.num_items:  # a user who has everything has no negatives to give
            assert all((user, item) not in positives for item in row)


@pytest.mark.parametrize("sampling", ["edges", "users"])
def test_an_epoch_draws_only_positives_and_as_many_as_there_are_edges(sampling):
    edge_index = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 3], [0, 1, 2, 3, 4, 5, 2, 7]])  # user 0: 6 items, 1 and 3: one; 2: none
    draw = positive_sampler(edge_index, 4, 3, sampling, torch.Generator().manual_seed(0))
    edges = set(zip(*edge_index.tolist()))
    epochs = [[pair for users, items in draw() for pair in zip(users.tolist(), items.tolist())] for _ in range(300)]
    assert all(len(epoch) == 8 and set(epoch) <= edges for epoch in epochs)
    share_of_user_0 = sum(u == 0 for epoch in epochs for u, _ in epoch) / (8 * 300)
    # By edge, user 0 is 6 of 8 draws; by user, 1 in 3 (user 2 has nothing to draw).
    assert share_of_user_0 == pytest.approx(6 / 8 if sampling == "edges" else 1 / 3, abs=0.03)


def test_holdout_keeps_every_user_and_item_trainable():
    graph = small_graph(num_users=20, num_items=15, edges=200)
    fit, validation = holdout_edges(graph, fraction=0.3, seed=0)
    assert validation._nnz() > 0
    assert fit.edge_index.size(1) + validation._nnz() == graph.edge_index.size(1)
    had_edges = torch.bincount(graph.edge_index[0], minlength=graph.num_users) > 0
    assert (torch.bincount(fit.edge_index[0], minlength=graph.num_users)[had_edges] > 0).all()
    # Held-out pairs are not masked as seen, so validation can find them.
    assert not (fit.seen.to_dense().bool() & validation.to_dense().bool()).any()


@pytest.fixture(scope="module")
def demo_data() -> TrainingData:
    dataset = read_dataset("demo", users=600, items=200, events=40_000, seed=5)
    return TrainingData(dataset.events, dataset.items, dataset.users, temporal_split(dataset.events), "temporal 70/10/20")


def test_bpr_training_lowers_the_loss(demo_data):
    graph = BipartiteGraph.from_events(demo_data.history, demo_data.items)
    config = LightGCNConfig(loss="bpr", batch_size=2048, lr=0.01, max_epochs=8)
    result = train_lightgcn(graph.normalized_adjacency("weight"), graph.edge_index, graph.num_users, graph.num_items, config)
    losses = [c.loss for c in result.history]
    assert len(losses) == 8
    assert losses[-1] < 0.8 * losses[0]


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    artifacts = ArtifactStore(tmp_path_factory.mktemp("artifacts"), "t_lightgcn")
    manifest = train_lightgcn_artifact(demo_data, artifacts, {"max_epochs": 30, "eval_every": 2, "batch_size": 4096})
    return artifacts, manifest


def test_beats_popularity_and_item_knn_on_held_out_data(demo_data, trained):
    _, manifest = trained
    baselines = baseline_metrics(demo_data, RankingProtocol.build(demo_data, EdgeWeights()))
    popularity = baselines["popularity"]["ndcg@20"]
    assert manifest.metrics["ndcg@20"] > 1.2 * popularity, (manifest.metrics["ndcg@20"], popularity)
    assert manifest.metrics["recall@20"] > baselines["popularity"]["recall@20"]
    history = manifest.metrics["history"]
    assert history and all("validation ndcg@20" in point for point in history)


def test_artifact_round_trips_to_the_same_scores(trained, demo_data):
    artifacts, manifest = trained
    folder = artifacts.resolve("lightgcn", manifest.version)
    loaded = LoadedLightGCN.load(folder)
    assert manifest.user_count == len(loaded.user_index) and manifest.item_count == len(loaded.items)

    # Saved weights, propagated again over the graph they were refitted on, give the served scores.
    state = torch.load(folder / "model.pt", weights_only=True)
    config = LightGCNConfig.model_validate(state["config"])
    graph = BipartiteGraph.from_events(demo_data.events, demo_data.items)
    assert graph.user_ids == list(loaded.user_index) and graph.item_ids == loaded.items.item_ids
    model = LightGCN(graph.num_users, graph.num_items, config.embedding_dim, config.num_layers)
    model.load_state_dict(state["state_dict"])
    rebuilt = model.embeddings(graph.normalized_adjacency(config.edge_values), cosine=config.unit_vectors)
    users = torch.arange(graph.num_users)
    torch.testing.assert_close(rebuilt.scores(users), loaded.embeddings.scores(users))


def test_serving_excludes_and_filters(trained, demo_data):
    artifacts, manifest = trained
    loaded = LoadedLightGCN.load(artifacts.resolve("lightgcn", manifest.version))
    user = next(iter(loaded.user_index))
    seen = demo_data.events.loc[demo_data.events["user_id"] == user, "item_id"].unique().tolist()
    category = next(c for c in loaded.items.categories if c)

    plain = loaded.rank([ModelQuery(user_id=user, k=10)])[0]
    excluded = loaded.rank([ModelQuery(user_id=user, k=10, exclude_ids=seen)])[0]
    filtered = loaded.rank([ModelQuery(user_id=user, k=10, filters=Filters(category=category))])[0]
    assert len(plain) == 10 and plain.source == "lightgcn"
    assert excluded and not set(excluded.item_ids) & set(seen)
    assert filtered and all(loaded.items.categories[loaded.items.index[i]] == category for i in filtered.item_ids)
    assert plain.scores == sorted(plain.scores, reverse=True)

    session = loaded.rank([ModelQuery(session_items=seen[:3], k=5)])[0]
    assert len(session) == 5 and not set(session.item_ids) & set(seen[:3])
    assert [len(answer) for answer in loaded.rank([ModelQuery(user_id="nobody-knows-me", k=5)])] == [0]
