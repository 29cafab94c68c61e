from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from graph_builders.splits import evaluation_targets, held_out_users_split, preset_split, temporal_split
from stores.frames import EVENT_COLUMNS, PresetSplit

T0 = pd.Timestamp("2024-03-01T00:00Z")


def events(*rows: tuple) -> pd.DataFrame:
    """rows: (user_id, item_id, event_type, value, hours after T0)."""
    records = [
        {
            "user_id": user,
            "item_id": item,
            "session_id": None,
            "event_type": kind,
            "value": np.nan if value is None else float(value),
            "device": None,
            "ts": T0 + pd.Timedelta(hours=hours),
            "idempotency_key": f"k{i}",
        }
        for i, (user, item, kind, value, hours) in enumerate(rows)
    ]
    return pd.DataFrame(records, columns=EVENT_COLUMNS)


def random_events(n: int = 1000, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hours = rng.uniform(0, 500, n)
    return events(*((f"u{rng.integers(50)}", f"i{rng.integers(80)}", "click", None, h) for h in hours))


def test_temporal_split_has_no_leakage_and_expected_fractions():
    frame = random_events()
    split = temporal_split(frame, test_fraction=0.2, validation_fraction=0.1)
    assert split.train["ts"].max() < split.validation["ts"].min()
    assert split.validation["ts"].max() < split.test["ts"].min()
    assert split.train["ts"].max() < split.validation_from <= split.validation["ts"].min()
    assert split.test["ts"].min() == split.test_from
    assert len(split.train) + len(split.validation) + len(split.test) == len(frame)
    assert len(split.test) == pytest.approx(200, abs=2)
    assert len(split.validation) == pytest.approx(100, abs=2)


def test_ties_at_the_cutoff_all_go_to_the_later_part():
    hours = [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    frame = events(*((f"u{i}", "a", "click", None, h) for i, h in enumerate(hours)))
    split = temporal_split(frame, test_fraction=0.5, validation_fraction=0.0)
    assert len(split.validation) == 0
    assert split.train["ts"].max() < split.test["ts"].min()
    assert len(split.train) == 3  # the 50% cutoff (5th event) falls inside the tied block at hour 1


def test_blackout_drops_events_just_before_each_cutoff():
    frame = random_events()
    gap = timedelta(hours=10)
    split = temporal_split(frame, blackout=gap)
    kept = pd.concat([split.train, split.validation, split.test])
    for cutoff in (split.validation_from, split.test_from):
        assert not ((kept["ts"] >= cutoff - gap) & (kept["ts"] < cutoff)).any()
    dropped = len(frame) - len(kept)
    cutoffs = (split.validation_from, split.test_from)
    in_gaps = sum(((frame["ts"] >= c - gap) & (frame["ts"] < c)).sum() for c in cutoffs)
    assert dropped == in_gaps > 0


def test_temporal_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        temporal_split(random_events(10), test_fraction=0.7, validation_fraction=0.3)


def test_preset_split_is_exact_with_optional_validation():
    frame = events(*((f"u{i}", "a", "click", None, i) for i in range(10)))
    preset = PresetSplit(test_from=(T0 + pd.Timedelta(hours=6)).to_pydatetime(), description="published")
    split = preset_split(frame, preset)
    assert sorted(split.test["user_id"]) == [f"u{i}" for i in range(6, 10)]
    assert len(split.train) == 6 and len(split.validation) == 0

    carved = preset_split(frame, preset, validation_fraction=0.5)
    assert carved.test.equals(split.test)
    assert carved.validation["user_id"].tolist() == ["u3", "u4", "u5"]
    assert carved.train["user_id"].tolist() == ["u0", "u1", "u2"]


def test_held_out_users_are_disjoint_and_reproducible():
    frame = random_events()
    train, held, ids = held_out_users_split(frame, fraction=0.2, seed=7)
    assert len(ids) == 10  # 20% of 50 users
    assert set(train["user_id"]).isdisjoint(ids)
    assert set(held["user_id"]) == set(ids)
    assert len(train) + len(held) == len(frame)
    assert held_out_users_split(frame, fraction=0.2, seed=7)[2] == ids
    assert held_out_users_split(frame, fraction=0.2, seed=8)[2] != ids


def test_evaluation_targets_protocol():
    train = events(("u", "a", "click", None, 0), ("u", "b", "click", None, 0), ("v", "a", "click", None, 0))
    test = events(
        ("u", "a", "click", None, 10),  # already in u's train history
        ("u", "b", "rating", 1, 10),
        ("u", "c", "rating", 5, 10),  # item c never in train
        ("v", "b", "click", None, 10),
        ("v", "b", "click", None, 11),  # duplicate pair
        ("v", "a", "impression", None, 11),
        ("new", "a", "click", None, 10),  # user not in train
    )
    targets = evaluation_targets(train, test)
    assert list(zip(targets["user_key"], targets["item_id"])) == [("v", "b")]

    with_history = evaluation_targets(train, test, exclude_train_items=False)
    assert list(zip(with_history["user_key"], with_history["item_id"])) == [("u", "a"), ("v", "b")]

    every_event = evaluation_targets(train, test, exclude_train_items=False, min_weight=None)
    expected = [("u", "a"), ("u", "b"), ("v", "a"), ("v", "b")]
    assert list(zip(every_event["user_key"], every_event["item_id"])) == expected
