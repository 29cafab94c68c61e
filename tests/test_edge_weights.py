import math

import numpy as np
import pandas as pd
import pytest

from graph_builders.bipartite import BipartiteGraph
from graph_builders.edge_weights import EdgeWeights, aggregate_interactions, event_weights, interaction_key
from stores.frames import EVENT_COLUMNS

T0 = pd.Timestamp("2024-03-01T00:00Z")
NO_DECAY = EdgeWeights(half_life_days=None)


def events(*rows: tuple) -> pd.DataFrame:
    """rows: (user_id, item_id, event_type, value, days after T0[, session_id])."""
    records = []
    for i, row in enumerate(rows):
        user, item, kind, value, days, *session = row
        records.append(
            {
                "user_id": user,
                "item_id": item,
                "session_id": session[0] if session else None,
                "event_type": kind,
                "value": np.nan if value is None else float(value),
                "device": None,
                "ts": T0 + pd.Timedelta(days=days),
                "idempotency_key": f"k{i}",
            }
        )
    return pd.DataFrame(records, columns=EVENT_COLUMNS)


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("impression", None, 0.2),
        ("click", None, 1.0),
        ("play", 120, 2 + math.log(121)),
        ("play", None, 2.0),
        ("rating", 1, -6.0),
        ("rating", 3, 1.0),
        ("rating", 5, 8.0),
        ("rating", 9, 8.0),  # clipped to the 1..5 scale
        ("purchase", None, 3.0),
        ("like", None, 2.0),
        ("add_to_cart", None, 1.5),
    ],
)
def test_each_event_type_formula(kind, value, expected):
    weights = event_weights(events(("u", "i", kind, value, 0)), NO_DECAY)
    assert weights == pytest.approx([expected])


def test_weights_are_configurable():
    config = EdgeWeights(click=4.0, rating_min=-1.0, rating_max=1.0, half_life_days=None)
    weights = event_weights(events(("u", "i", "click", None, 0), ("u", "i", "rating", 3, 0)), config)
    assert weights == pytest.approx([4.0, 0.0])


def test_decay_halves_every_half_life_relative_to_latest_event():
    frame = events(("u", "a", "click", None, 0), ("u", "b", "click", None, 7), ("u", "c", "click", None, 14))
    assert event_weights(frame) == pytest.approx([0.25, 0.5, 1.0])


def test_decay_uses_explicit_now_and_never_boosts_future_events():
    frame = events(("u", "a", "click", None, 0), ("u", "b", "click", None, 10))
    weights = event_weights(frame, EdgeWeights(half_life_days=2.0), now=T0 + pd.Timedelta(days=2))
    assert weights == pytest.approx([0.5, 1.0])


def test_decay_disabled_keeps_raw_weights():
    frame = events(("u", "a", "purchase", None, 0), ("u", "b", "purchase", None, 300))
    assert event_weights(frame, NO_DECAY) == pytest.approx([3.0, 3.0])


def test_unknown_event_type_is_rejected():
    with pytest.raises(ValueError, match="unknown event types"):
        event_weights(events(("u", "i", "teleport", None, 0)))


def test_interaction_key_uses_session_for_anonymous_events():
    frame = events(
        ("u1", "a", "click", None, 0, "s9"), (None, "a", "click", None, 0, "s1"), (None, "b", "click", None, 0)
    )
    assert interaction_key(frame).tolist() == ["u1", "session:s1", None]


def test_aggregation_sums_per_user_item_pair():
    frame = events(
        ("u", "a", "click", None, 0),
        ("u", "a", "play", 120, 0),
        ("u", "a", "impression", None, 0),
        ("u", "b", "rating", 1, 0),
        ("v", "a", "click", None, 0),
        (None, "b", "click", None, 0, "s1"),
        (None, "b", "click", None, 0),  # neither user nor session: unattributable
    )
    pairs = aggregate_interactions(frame, NO_DECAY)
    assert pairs.columns.tolist() == ["user_key", "item_id", "weight", "count", "last_ts"]
    assert list(zip(pairs["user_key"], pairs["item_id"])) == [("session:s1", "b"), ("u", "a"), ("u", "b"), ("v", "a")]
    assert pairs["weight"].tolist() == pytest.approx([1.0, 1.0 + 2 + math.log(121) + 0.2, -6.0, 1.0])
    assert pairs["count"].tolist() == [1, 3, 1, 1]


def test_aggregation_keeps_last_timestamp_and_decays_before_summing():
    frame = events(("u", "a", "click", None, 0), ("u", "a", "click", None, 7))
    pairs = aggregate_interactions(frame)
    assert pairs["weight"].tolist() == pytest.approx([1.5])
    assert pairs["last_ts"].iloc[0] == T0 + pd.Timedelta(days=7)


def test_negative_total_is_seen_but_never_a_positive_edge():
    frame = events(
        ("u", "liked", "click", None, 0),
        ("u", "hated", "click", None, 0),
        ("u", "hated", "rating", 1, 0),  # 1 - 6 = -5
        ("v", "liked", "rating", 5, 0),
    )
    graph = BipartiteGraph.from_events(frame, config=NO_DECAY)
    u, hated, liked = graph.user_index["u"], graph.item_index["hated"], graph.item_index["liked"]
    positive = set(zip(*graph.edge_index.tolist()))
    assert (u, hated) not in positive
    assert (u, liked) in positive
    assert graph.negative_edge_index.tolist() == [[u], [hated]]
    assert graph.seen.to_dense()[u, hated] == 1
    assert graph.edge_weight.min() > 0
