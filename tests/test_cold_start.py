"""The cold-start protocol (issue 5) and its baselines: held-out users, segment popularity, metadata similarity."""

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.cold_start import default_methods, evaluate, run
from graph_builders.edge_weights import interaction_key
from graph_builders.splits import cold_start_cases
from models.metadata_similarity import MetadataSimilarity, item_tokens
from models.segment_popularity import SegmentPopularity, segments_of
from pipelines.datasets import read_demo
from pipelines.datasets.validation import items_frame, users_frame
from tests.test_splits import events

def random_log(users: int = 60, items: int = 40, n: int = 3000, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["impression", "click", "like"], size=n, p=[0.3, 0.6, 0.1])
    frame = events(*(
        (f"u{u}", f"i{i}", kind, None, float(h))
        for u, i, kind, h in zip(rng.integers(users, size=n), rng.integers(items, size=n), kinds,
                                 rng.uniform(0, 1000, n))
    ))
    people = users_frame(
        user_id=np.array([f"u{u}" for u in range(users)], dtype=object),
        device=np.array(["ios" if u % 2 else "web" for u in range(users)], dtype=object),
        attrs=[{"age_band": "18-24" if u % 3 else "45+", "country": "DE"} for u in range(users)],
    )
    return frame, people


def test_held_out_users_are_removed_entirely_and_the_split_is_deterministic():
    frame, people = random_log()
    cases = cold_start_cases(frame, people, fraction=0.2, seed=5)
    held = set(cases.held_out)
    assert len(held) == 12 and cases.cases
    assert not held & set(interaction_key(cases.train))
    assert not held & set(cases.users["user_id"])
    assert len(cases.users) == len(people) - len(held)
    assert {case.user_key for case in cases.cases} <= held
    assert cases.item_ids == sorted(set(cases.train["item_id"]))  # no catalogue given: item_id_order sorts
    again = cold_start_cases(frame, people, fraction=0.2, seed=5)
    assert again.cases == cases.cases and again.held_out == cases.held_out
    assert cold_start_cases(frame, people, fraction=0.2, seed=6).held_out != cases.held_out


def test_given_items_are_the_first_relevant_ones_and_targets_the_rest():
    frame, people = random_log()
    cases = cold_start_cases(frame, people, fraction=0.2, seed=5, given=(3, 0, 1))
    assert cases.given == (0, 1, 3)
    first_seen = frame.groupby(["user_id", "item_id"])["ts"].min()
    for case in cases.cases:
        assert len(case.given) == 3 and case.targets
        assert not set(case.given) & set(case.targets)
        given_ts = [first_seen[case.user_key, item] for item in case.given]
        assert given_ts == sorted(given_ts)
        assert max(given_ts) <= min(first_seen[case.user_key, item] for item in case.targets)
        assert case.device == ("ios" if int(case.user_key[1:]) % 2 else "web")
    assert cases.given_items(1) == [case.given[:1] for case in cases.cases]
    assert cases.given_indices(0) == [[] for _ in cases.cases]


def test_relevance_threshold_unknown_items_and_too_short_users():
    frame = events(
        ("a", "x", "click", None, 0), ("a", "y", "click", None, 1), ("b", "z", "click", None, 2),
        ("c", "x", "impression", None, 0),
        # seed 0 holds out h1 and h2 (2 of the 5 users)
        ("h1", "y", "impression", None, 0), ("h1", "only_h1", "click", None, 1), ("h1", "x", "click", None, 2),
        ("h1", "z", "click", None, 3), ("h1", "y", "click", None, 4), ("h1", "w", "impression", None, 5),
        ("h2", "x", "click", None, 0),
    )
    cases = cold_start_cases(frame, None, fraction=0.4, seed=0, given=(0, 1))
    assert cases.held_out == ["h1", "h2"]
    assert cases.item_ids == ["x", "y", "z"]  # only_h1 has no training event: never given, never a target
    # y became relevant (0.2 + 1.0 >= 1) only with its later click, but it was h1's first item; w (an
    # impression) is not relevant; h2 has one relevant item, too few to be given one and keep a target.
    (case,) = cases.cases
    assert (case.user_key, case.given, case.targets, case.device, case.attrs) == ("h1", ["y"], ["x", "z"], None, {})
    assert cold_start_cases(frame, None, fraction=0.4, seed=0, given=(0, 1), min_weight=1.1).cases == []


def test_segment_popularity_ranks_a_segments_favourite_above_the_global_favourite():
    rows = []
    for u in range(20):  # 20 web users: everyone clicks "hit", 18 of them twice
        rows += [(f"w{u}", "hit", "click", None, u), (f"w{u}", "hit", "click", None, u + 0.5)]
    for u in range(6):  # 6 console users: "niche" and a few "hit"
        rows += [(f"c{u}", "niche", "click", None, u), (f"c{u}", "niche", "like", None, u + 0.1)]
        if u < 2:
            rows.append((f"c{u}", "hit", "click", None, u + 0.2))
    frame = events(*rows)
    people = users_frame(
        user_id=np.array([f"w{u}" for u in range(20)] + [f"c{u}" for u in range(6)], dtype=object),
        device=np.array(["web"] * 20 + ["console"] * 6, dtype=object),
        attrs=[{"age": 25}] * 26,
    )
    items = ["hit", "niche", "never"]
    for combine in ("mean", "naive_bayes"):
        model = SegmentPopularity.fit(frame, people, items, combine=combine, beta=1.0)
        scores = model.scores([["device=console", "age=20s"], ["device=web"], ["device=unknown"], []])
        assert scores.shape == (4, 3)
        assert scores[0, 1] > scores[0, 0], combine  # the console segment's favourite beats the global one
        assert scores[1, 0] > scores[1, 1] > scores[1, 2], combine
        assert torch.argmax(scores[2]) == 0 and torch.argmax(scores[3]) == 0  # unknown / none: global order
        assert torch.isfinite(scores).all()
    assert segments_of("console", {"age": 25, "gender": "F", "zip": "1"}) == ["device=console", "age=20s", "gender=F"]
    assert segments_of(None, None) == []


def test_metadata_similarity_ranks_a_same_provider_same_badge_item_above_an_unrelated_one():
    catalogue = items_frame(
        item_id=np.array(["seed", "sibling", "cousin", "stranger", "bare"], dtype=object),
        title=np.array(["Star Legion", "Star Fleet", "Mud Farm", "Candy Gems", None], dtype=object),
        provider=np.array(["Nebula", "Nebula", "Other", "Sweet", None], dtype=object),
        category=np.array(["strategy", "strategy", "simulation", "puzzle", None], dtype=object),
        badges=[["space", "co-op"], ["space"], ["co-op", "farming"], ["match-3"], []],
    )
    model = MetadataSimilarity.fit(catalogue)
    assert item_tokens(catalogue.iloc[1], title_words=True) == [
        "provider=Nebula", "category=strategy", "badge=space", "title=star", "title=fleet"]
    scores = model.scores([[0], [], [0, 2]])
    assert scores.shape == (3, 5)
    assert scores[0, 0] == pytest.approx(1.0)
    assert scores[0, 1] > scores[0, 2] > scores[0, 3] == 0.0
    assert scores[0, 4] == 0.0 and (scores[1] == 0).all()  # no tokens / no given items: nothing to say
    assert scores[2, 2] > scores[0, 2]
    weighted = model.scores([[0, 3]], weights=[[1.0, 5.0]])
    assert weighted[0, 3] > weighted[0, 1]
    restricted = MetadataSimilarity.fit(catalogue, ["stranger", "seed", "missing"])
    assert restricted.scores([[1]])[0].tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_the_benchmark_runs_every_method_on_the_same_cases():
    data = read_demo(users=300, items=60, events=12_000, seed=2)
    report = run(data, fraction=0.2, seed=0, ks=(5, 20))
    assert report["protocol"]["cases"] > 10
    methods = report["methods"]
    assert set(methods) == set(default_methods())
    assert methods["item-knn"]["0"] is None and methods["item-knn"]["3"]["recall@20"] > 0
    for name, by_given in methods.items():
        for metrics in by_given.values():
            if metrics is not None:
                assert metrics["num_users"] == report["protocol"]["cases"], name
                assert 0.0 <= metrics["recall@20"] <= 1.0


def test_an_oracle_method_scores_perfect_recall():
    frame, people = random_log()
    cases = cold_start_cases(frame, people, fraction=0.2, seed=5)

    def oracle(cases, g):
        scores = torch.zeros(len(cases.cases), len(cases.item_ids))
        for row, targets in enumerate(cases.target_indices()):
            scores[row, targets] = 1.0
        return scores

    metrics = evaluate(cases, oracle, 1, ks=(40,))
    assert metrics["recall@40"] == pytest.approx(1.0)
