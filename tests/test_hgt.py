"""HGT: the plain-torch neighbour sampler, placing a new node, training on generated data, the artifact
and what it serves (cold users, similar items, provider items)."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import HeteroData
from torch_geometric.loader import LinkNeighborLoader

from graph_builders.edge_weights import EdgeWeights
from graph_builders.splits import temporal_split
from models.hgt import HGTRecommender, combine
from models.hgt_serving import HGTIndex, UnknownEntity, UserContext
from models.neighbor_sampling import TorchNeighborSampler
from pipelines.datasets import read_dataset
from pipelines.hgt import train_hgt_artifact
from pipelines.protocol import RankingProtocol, TrainingData, baseline_metrics
from stores.artifacts import ArtifactStore


def tiny_graph(seed: int = 0) -> HeteroData:
    generator = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data["user"].num_nodes, data["item"].num_nodes, data["device"].num_nodes = 40, 25, 3
    pairs = torch.stack([torch.randint(40, (300,), generator=generator), torch.randint(25, (300,), generator=generator)])
    data["user", "interacts", "item"].edge_index = torch.unique(pairs, dim=1)
    data["user", "uses", "device"].edge_index = torch.stack([torch.arange(40), torch.arange(40) % 3])
    return T.ToUndirected()(data)


def test_sampler_returns_real_edges_within_the_fanout_seeds_first():
    data = tiny_graph()
    interactions = data["user", "interacts", "item"].edge_index
    loader = LinkNeighborLoader(
        data, num_neighbors=[4, 2], edge_label_index=(("user", "interacts", "item"), interactions), batch_size=16,
        neg_sampling=dict(mode="triplet", amount=1), neighbor_sampler=TorchNeighborSampler(data, num_neighbors=[4, 2]),
    )
    known = {pair for pair in map(tuple, interactions.t().tolist())}
    for batch in loader:
        for edge_type in batch.edge_types:
            source, _, target = edge_type
            local = batch[edge_type].edge_index
            pairs = set(zip(batch[source].n_id[local[0]].tolist(), batch[target].n_id[local[1]].tolist()))
            assert pairs <= set(map(tuple, data[edge_type].edge_index.t().tolist())), edge_type
            # No node receives more than the first hop's fan-out from one edge type.
            assert max(Counter(local[1].tolist()).values(), default=0) <= 4 + 2
        users = batch["user"].n_id[batch["user"].src_index]
        items = batch["item"].n_id[batch["item"].dst_pos_index]
        assert set(zip(users.tolist(), items.tolist())) <= known


def test_a_new_node_is_placed_exactly_as_the_full_graph_would_place_it():
    data = tiny_graph()
    model = HGTRecommender({"user": 40, "item": 25, "device": 3}, data.metadata(), 16, num_layers=2, heads=2).eval()
    layers = model.layer_outputs(data.edge_index_dict)
    neighbours = {("item", "rev_interacts", "user"): torch.tensor([2, 7]), ("device", "rev_uses", "user"): torch.tensor([1])}
    placed = model.embed_new_node("user", neighbours, layers)

    # The same graph with user 40 (no ID embedding: the unseen token) linked into by those neighbours.
    grown = data.clone()
    grown["user"].num_nodes = 41
    for edge_type, sources in neighbours.items():
        new = torch.stack([sources, torch.full_like(sources, 40)])
        grown[edge_type].edge_index = torch.cat([grown[edge_type].edge_index, new], dim=1)
    n_id = {"user": torch.arange(41), "item": torch.arange(25), "device": torch.arange(3)}
    full = model.propagate(model.inputs(n_id), grown.edge_index_dict)
    torch.testing.assert_close(placed, combine(full)["user"][40])


@pytest.fixture(scope="module")
def demo_data() -> TrainingData:
    dataset = read_dataset("demo", users=600, items=200, events=30_000, seed=5)
    return TrainingData(dataset.events, dataset.items, dataset.users, temporal_split(dataset.events), "temporal 70/10/20")


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    artifacts = ArtifactStore(tmp_path_factory.mktemp("artifacts"), "t_hgt")
    manifest = train_hgt_artifact(demo_data, artifacts, {"max_epochs": 15, "patience": 15, "batch_size": 256})
    return HGTIndex.load(artifacts.resolve("hgt", manifest.version)), manifest


def test_training_lowers_the_loss_and_beats_popularity(demo_data, trained):
    _, manifest = trained
    history = manifest.metrics["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    popularity = baseline_metrics(demo_data, RankingProtocol.build(demo_data, EdgeWeights()))["popularity"]
    assert manifest.metrics["ndcg@20"] > popularity["ndcg@20"], (manifest.metrics["ndcg@20"], popularity["ndcg@20"])


def test_a_cold_user_gets_their_devices_taste(demo_data, trained):
    index, _ = trained
    events = demo_data.events
    categories = dict(zip(demo_data.items["item_id"], demo_data.items["category"]))

    def device_share(device: str) -> pd.Series:
        played = events.loc[events["device"] == device, "item_id"].map(categories)
        return played.value_counts(normalize=True)

    for device in ("console", "ios"):
        recommended = [categories[r.item_id] for r in index.recommend(UserContext(device=device), k=20)]
        assert len(recommended) == 20 and all("device=" + device in r.reason for r in index.recommend(UserContext(device=device), 3))
        # The categories recommended are ones the device's players favour more than others do.
        share, overall = device_share(device), events["item_id"].map(categories).value_counts(normalize=True)
        lift = sum((share.get(c, 0) / overall[c]) for c in recommended) / len(recommended)
        assert lift > 1.1, (device, lift, Counter(recommended))
    assert index.recommend(UserContext(user_id="nobody-knows"), k=5) == []


def test_similar_items_share_provider_or_badges_far_more_than_chance(trained):
    index, _ = trained
    def shares(a: int, b: int) -> bool:
        provider = index.items.providers[a]
        return (provider is not None and provider == index.items.providers[b]) or bool(set(index.badges[a]) & set(index.badges[b]))

    n = len(index.items)
    chance = sum(shares(a, b) for a in range(n) for b in range(n) if a != b) / (n * (n - 1))
    hits = total = 0
    for anchor in range(0, n, 5):
        for found in index.similar_items(index.items.item_ids[anchor], k=10):
            hits += shares(anchor, index.items.index[found.item_id])
            total += 1
    assert hits / total > 1.5 * chance, (hits / total, chance)
    with pytest.raises(UnknownEntity, match="unknown item 'no-such-game'"):
        index.similar_items("no-such-game", k=5)


def test_provider_items_are_that_providers_only(trained):
    index, _ = trained
    provider = Counter(p for p in index.items.providers if p).most_common(1)[0][0]
    user = next(iter(index.node_index["user"]))
    for context in (None, UserContext(user_id=user), UserContext(device="console")):
        found = index.provider_items(provider, k=50, user=context)
        assert found and all(index.items.providers[index.items.index[f.item_id]] == provider for f in found)
    with pytest.raises(UnknownEntity, match="unknown provider 'Nobody Studios'"):
        index.provider_items("Nobody Studios", k=5)


def test_a_new_catalogue_item_gets_an_embedding_from_its_provider_and_badges(demo_data, trained):
    index, _ = trained
    template = demo_data.items.iloc[0]
    new = pd.DataFrame([{**template.to_dict(), "item_id": "brand-new"}])
    assert index.add_catalogue_items(new) == 1
    similar = index.similar_items("brand-new", k=5)
    anchor = index.items.index["brand-new"]
    everything = index.recommend(UserContext(device="console"), k=len(index.items))
    assert "brand-new" in {r.item_id for r in everything}
    assert any(index.items.providers[index.items.index[s.item_id]] == template["provider"]
               or set(index.badges[index.items.index[s.item_id]]) & set(index.badges[anchor]) for s in similar)
