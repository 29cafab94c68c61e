import math

import numpy as np
import pandas as pd
import pytest
import torch

from graph_builders.bipartite import BipartiteGraph, csr_from_indices
from graph_builders.edge_weights import EdgeWeights
from graph_builders.heterogeneous import build_hetero_graph, user_attribute_values
from graph_builders.temporal import EVENT_TYPE_ORDER, MESSAGE_DIM, build_temporal_stream, session_sequences
from stores.frames import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS

T0 = pd.Timestamp("2024-03-01T00:00Z")
NO_DECAY = EdgeWeights(half_life_days=None)


def events(*rows: tuple) -> pd.DataFrame:
    """rows: (user_id, item_id, event_type, value, minutes after T0[, session_id[, device]])."""
    records = []
    for i, (user, item, kind, value, minutes, *rest) in enumerate(rows):
        records.append(
            {
                "user_id": user,
                "item_id": item,
                "session_id": rest[0] if rest else None,
                "event_type": kind,
                "value": np.nan if value is None else float(value),
                "device": rest[1] if len(rest) > 1 else None,
                "ts": T0 + pd.Timedelta(minutes=minutes),
                "idempotency_key": f"k{i}",
            }
        )
    return pd.DataFrame(records, columns=EVENT_COLUMNS)


def catalogue(*rows: tuple) -> pd.DataFrame:
    """rows: (item_id, provider, category, badges, attrs)."""
    return pd.DataFrame(
        [
            {
                "item_id": item,
                "title": item,
                "description": "",
                "provider": provider,
                "category": category,
                "badges": badges,
                "attrs": attrs,
                "created_at": T0,
            }
            for item, provider, category, badges, attrs in rows
        ],
        columns=ITEM_COLUMNS,
    )


# Users u1 -> {a, b}, u2 -> {b}; item c is in the catalogue only.
TINY = events(("u2", "b", "click", None, 0), ("u1", "a", "click", None, 1), ("u1", "b", "click", None, 2))
TINY_ITEMS = catalogue(("a", None, None, [], {}), ("b", None, None, [], {}), ("c", None, None, [], {}))


def test_id_maps_round_trip_and_catalogue_items_without_events_are_indexed():
    graph = BipartiteGraph.from_events(TINY, TINY_ITEMS, config=NO_DECAY)
    assert graph.user_ids == ["u1", "u2"]
    assert graph.item_ids == ["a", "b", "c"]
    assert all(graph.user_ids[graph.user_index[u]] == u for u in graph.user_ids)
    assert all(graph.item_ids[graph.item_index[i]] == i for i in graph.item_ids)
    assert graph.item_degrees().tolist() == [1, 2, 0]
    assert graph.positives_per_user().tolist() == [2, 1]


def test_event_only_items_are_indexed_after_the_catalogue():
    frame = pd.concat([TINY, events(("u1", "zz", "click", None, 3), ("u1", "d", "click", None, 4))])
    graph = BipartiteGraph.from_events(frame, TINY_ITEMS)
    assert graph.item_ids == ["a", "b", "c", "d", "zz"]


def test_normalized_adjacency_matches_hand_computation():
    adjacency = BipartiteGraph.from_events(TINY, TINY_ITEMS, binary=True).normalized_adjacency()
    assert adjacency.layout == torch.sparse_csr
    assert adjacency.dtype == torch.float32
    # Nodes: u1=0, u2=1, a=2, b=3, c=4. Degrees: u1 2, u2 1, a 1, b 2, c 0.
    expected = torch.zeros(5, 5)
    for user, item, value in [(0, 2, 1 / math.sqrt(2 * 1)), (0, 3, 1 / math.sqrt(2 * 2)), (1, 3, 1 / math.sqrt(1 * 2))]:
        expected[user, item] = expected[item, user] = value
    dense = adjacency.to_dense()
    torch.testing.assert_close(dense, expected)
    torch.testing.assert_close(dense, dense.T)


def test_weighted_adjacency_uses_weighted_degrees():
    frame = events(("u", "a", "purchase", None, 0), ("u", "b", "click", None, 0))
    dense = BipartiteGraph.from_events(frame, config=NO_DECAY).normalized_adjacency("weight").to_dense()
    # deg(u) = 3 + 1, deg(a) = 3, deg(b) = 1.
    assert dense[0, 1].item() == pytest.approx(3 / math.sqrt(4 * 3))
    assert dense[0, 2].item() == pytest.approx(1 / math.sqrt(4 * 1))
    torch.testing.assert_close(dense, dense.T)


def test_binary_graph_has_unit_weights_and_user_item_csr():
    graph = BipartiteGraph.from_events(events(("u", "a", "purchase", None, 0)), binary=True)
    assert graph.edge_weight.tolist() == [1.0]
    assert graph.user_item_csr().layout == torch.sparse_csr
    assert graph.user_item_csr().to_dense().tolist() == [[1.0]]


def test_csr_from_indices_rejects_out_of_range_indices():
    with pytest.raises(ValueError, match="column index out of range"):
        csr_from_indices(np.array([0]), np.array([5]), (1, 5))


def test_temporal_stream_is_time_sorted_offset_and_featurised():
    frame = events(
        ("u2", "b", "rating", 1, 30),
        ("u1", "a", "play", 120, 10),
        ("u1", "zz", "click", None, 20),  # item not in the map: dropped
        ("u1", "b", "click", None, 10),  # same time as the play: keeps frame order after it
    )
    stream = build_temporal_stream(frame, {"u1": 0, "u2": 1}, {"a": 0, "b": 1})
    data = stream.data
    assert stream.dropped == 1
    assert data.t.tolist() == [int(T0.timestamp()) + 600, int(T0.timestamp()) + 600, int(T0.timestamp()) + 1800]
    assert data.src.tolist() == [0, 0, 1]
    assert data.dst.tolist() == [2 + 0, 2 + 1, 2 + 1]  # item index + num_users
    assert data.msg.shape == (3, MESSAGE_DIM)
    play, click, rating = data.msg
    assert play[EVENT_TYPE_ORDER.index("play")] == 1 and play[: len(EVENT_TYPE_ORDER)].sum() == 1
    assert play[-2].item() == pytest.approx(2 + math.log(121))  # undecayed signed weight
    assert play[-1].item() == pytest.approx(math.log1p(120))
    assert click[-1].item() == 0.0
    assert rating[-2].item() == pytest.approx(-6.0)  # sign kept


def test_session_sequences_split_at_inactivity_and_keep_named_sessions():
    frame = events(
        ("u", "a", "click", None, 0),
        ("u", "b", "click", None, 20),
        ("u", "c", "click", None, 51),  # 31 min idle: new session
        (None, "x", "click", None, 5, "s1"),
        (None, "y", "click", None, 300, "s1"),  # a named session is kept whole
    )
    sessions = session_sequences(frame, gap_minutes=30)
    assert sessions["session_key"].tolist() == ["u#0", "s1", "u#1"]
    assert sessions["item_ids"].tolist() == [["a", "b"], ["x", "y"], ["c"]]
    assert sessions["user_key"].tolist() == ["u", "session:s1", "u"]


def test_hetero_graph_types_counts_and_cold_user():
    items = catalogue(
        ("a", "studio1", "rpg", ["coop", "indie"], {"promotions": ["spring"]}),
        ("b", "studio1", "fps", ["indie"], {}),
        ("c", "studio2", None, None, None),
    )
    users = pd.DataFrame(
        [
            {"user_id": "cold", "device": "tv", "attrs": {"age": 30}, "created_at": T0},
            {"user_id": "u1", "device": None, "attrs": {}, "created_at": T0},
        ],
        columns=USER_COLUMNS,
    )
    frame = events(
        ("u1", "a", "click", None, 0, None, "ios"),
        ("u1", "b", "click", None, 1, None, "web"),
        ("u1", "b", "rating", 1, 2, None, "ios"),  # u1-b total is negative: no interacts edge
        ("u2", "c", "play", 10, 3, None, "web"),
    )
    graph = build_hetero_graph(frame, items, users, config=NO_DECAY)
    data = graph.data
    assert graph.node_ids == {
        "user": ["cold", "u1", "u2"],
        "item": ["a", "b", "c"],
        "provider": ["studio1", "studio2"],
        "category": ["fps", "rpg"],
        "badge": ["coop", "indie"],
        "promotion": ["spring"],
        "device": ["ios", "tv", "web"],
        "attribute": ["age=30s"],
    }
    assert {kind: data[kind].num_nodes for kind in data.node_types} == {k: len(v) for k, v in graph.node_ids.items()}

    def edges(relation: tuple[str, str, str]) -> set[tuple[str, str]]:
        source, _, target = relation
        pairs = data[relation].edge_index.t().tolist()
        return {(graph.node_ids[source][s], graph.node_ids[target][t]) for s, t in pairs}

    assert edges(("user", "interacts", "item")) == {("u1", "a"), ("u2", "c")}
    assert data["user", "interacts", "item"].edge_weight.min() > 0
    assert edges(("item", "made_by", "provider")) == {("a", "studio1"), ("b", "studio1"), ("c", "studio2")}
    assert edges(("item", "has_badge", "badge")) == {("a", "coop"), ("a", "indie"), ("b", "indie")}
    assert edges(("item", "in_category", "category")) == {("a", "rpg"), ("b", "fps")}
    assert edges(("item", "in_promotion", "promotion")) == {("a", "spring")}
    # Declared device first; u1 has none declared, so its most frequent event device (ios, 2 of 3).
    assert edges(("user", "uses", "device")) == {("cold", "tv"), ("u1", "ios"), ("u2", "web")}
    assert edges(("item", "rev_interacts", "user")) == {("a", "u1"), ("c", "u2")}
    assert edges(("user", "has_attribute", "attribute")) == {("cold", "age=30s")}
    assert ("device", "rev_uses", "user") in data.edge_types
    assert len(data.edge_types) == 14


def test_user_attribute_values_bin_numbers_and_skip_the_rest():
    attrs = {"age": 34, "gender": "F", "occupation": "", "zip": "55105", "country": None, "age_band": ["x"]}
    assert user_attribute_values(attrs) == ["age=30s", "gender=F"]
    assert user_attribute_values({"age": 34.9}, keys=["age"]) == ["age=30s"]
    assert user_attribute_values(None) == []


def test_hetero_graph_without_promotions_has_no_promotion_type():
    graph = build_hetero_graph(TINY, TINY_ITEMS, None)
    assert "promotion" not in graph.data.node_types
    assert graph.data["provider"].num_nodes == 0
    assert graph.data["user", "interacts", "item"].edge_index.shape == (2, 3)
