"""Session-based next-item protocol and baselines: cases, metrics (ties), SKNN and item co-occurrence against
brute-force ports of session-rec's loops, and SKNN against popularity on the YOOCHOOSE sample."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch

from models.cooccurrence import ItemCooccurrence
from models.next_item import NextItemAccumulator, evaluate_next_item, next_item_cases
from models.session_knn import SessionKNN
from pipelines.datasets import default_data_dir

DATA_DIR = default_data_dir()
YOOCHOOSE = DATA_DIR / "yoochoose-100k-sample"


def random_sessions(num_sessions: int, num_items: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    # Few items and short sessions: many candidate sessions per prefix, shared items, repeats and ties.
    return [[rng.randrange(num_items) for _ in range(rng.randint(1, 6))] for _ in range(num_sessions)]


# --------------------------------------------------------------------------------------------
# Protocol and metrics


def test_next_item_cases_hand_built():
    sessions = [[3, 1, 4], [7], [], [2, 2]]
    cases = next_item_cases(sessions)
    assert cases.prefixes == [[3], [3, 1], [2]]
    assert cases.targets.tolist() == [1, 4, 2]
    assert cases.sessions.tolist() == [0, 0, 3]
    assert cases.positions.tolist() == [1, 2, 1]
    assert len(cases) == 3
    sessions[0][0] = 99  # prefixes are copies, not views of the caller's lists
    assert cases.prefixes[0] == [3]


def test_accumulator_hand_computed_with_ties():
    scores = torch.tensor(
        [
            [0.9, 0.5, 0.5, 0.1, 0.0],  # target 2 ties with item 1: rank 3, not 2
            [0.2, 0.8, 0.1, 0.3, 0.0],  # target 1: rank 1
            [1.0, 1.0, 1.0, 1.0, 1.0],  # all equal: rank 5, no lucky hit
            [0.1, 0.2, 0.3, 0.4, 0.5],  # target 0 last: rank 5
        ]
    )
    targets = torch.tensor([2, 1, 0, 0])
    accumulator = NextItemAccumulator(5, ks=(1, 3))
    accumulator.add(scores, targets)
    result = accumulator.result()
    assert result["cases"] == 4
    assert result["recall@1"] == pytest.approx(1 / 4)
    assert result["mrr@1"] == pytest.approx(1 / 4)
    assert result["recall@3"] == pytest.approx(2 / 4)
    assert result["mrr@3"] == pytest.approx((1 / 3 + 1) / 4)
    # Covered at K=1: item 0 (row 0), 1 (row 1), 4 (row 3); the all-equal row covers nothing.
    assert result["coverage@1"] == pytest.approx(3 / 5)

    tied = NextItemAccumulator(5, ks=(3,))
    tied.add(scores[2:3], targets[2:3])
    assert tied.result() == {"recall@3": 0.0, "mrr@3": 0.0, "coverage@3": 0.0, "cases": 1.0}


def test_accumulator_nan_and_bad_input():
    accumulator = NextItemAccumulator(3, ks=(1,))
    # NaN counts as -inf: a NaN target misses, a NaN rival does not beat the target.
    accumulator.add(torch.tensor([[float("nan"), 1.0, 0.0], [float("nan"), 1.0, 0.0]]), torch.tensor([0, 1]))
    assert accumulator.result()["recall@1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        accumulator.add(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="targets"):
        accumulator.add(torch.zeros(1, 3), torch.tensor([3]))


def test_evaluate_next_item_does_not_depend_on_batch_size():
    sessions = random_sessions(60, 12, seed=1)
    cases = next_item_cases(sessions)
    generator = torch.Generator().manual_seed(0)
    table = torch.randint(0, 4, (len(cases), 12), generator=generator).float()  # coarse scores: many ties
    by_prefix = {id(prefix): row for prefix, row in zip(cases.prefixes, table)}

    def score_fn(prefixes):
        return torch.stack([by_prefix[id(prefix)] for prefix in prefixes])

    whole = NextItemAccumulator(12, ks=(1, 5))
    whole.add(table, cases.targets)
    for batch_size in (1, 7, 512):
        assert evaluate_next_item(score_fn, cases, 12, ks=(1, 5), batch_size=batch_size) == whole.result()


# --------------------------------------------------------------------------------------------
# SKNN


def reference_sknn(train, times, prefix, num_items, k, sample_size, similarity):
    """session-rec ContextKNN's loops, with exact (Fraction) similarities for the neighbour order."""
    recency = {n: r for r, n in enumerate(sorted(range(len(train)), key=lambda n: (times[n], n)))}
    current = set(prefix)
    candidates = sorted((n for n in range(len(train)) if current & set(train[n])), key=recency.get)
    if sample_size:
        candidates = candidates[-sample_size:]

    def exact(n):
        shared, size = len(current & set(train[n])), len(set(train[n]))
        if similarity == "cosine":
            return Fraction(shared * shared, len(current) * size)  # cosine squared: same order
        return Fraction(shared, len(current) + size - shared)

    neighbors = sorted(candidates, key=lambda n: (exact(n), recency[n]), reverse=True)[:k]
    scores = [0.0] * num_items
    for n in neighbors:
        weight = math.sqrt(exact(n)) if similarity == "cosine" else float(exact(n))
        for item in set(train[n]):
            scores[item] += weight
    return scores


@pytest.mark.parametrize(
    ("k", "sample_size", "similarity"), [(100, 500, "cosine"), (3, 5, "cosine"), (4, 0, "jaccard")]
)
def test_sknn_matches_session_rec_loops(k, sample_size, similarity):
    num_items = 15
    train = random_sessions(80, num_items, seed=2)
    times = [float((7 * n) % 20) for n in range(len(train))]  # repeated times: the list order decides
    prefixes = [session[:cut] for session in random_sessions(40, num_items, seed=4) for cut in (1, 3)] + [[]]
    model = SessionKNN.fit(train, num_items, times, k=k, sample_size=sample_size, similarity=similarity)
    expected = torch.tensor(
        [reference_sknn(train, times, prefix, num_items, k, sample_size, similarity) for prefix in prefixes]
    )
    torch.testing.assert_close(model.scores(prefixes), expected.float(), rtol=1e-5, atol=1e-6)


def test_sknn_recommends_what_followed_the_prefix_in_a_neighbour():
    train = [[1, 2, 3], [4, 5], [9], [9, 6], [9, 7], [9, 8], [9, 4]]  # 9 is popular but never meets 1 or 2
    model = SessionKNN.fit(train, 10)
    scores = model.scores([[1, 2]])[0]
    assert scores[3] > 0 and scores[9] == 0 and scores[5] == 0
    others = torch.tensor([i not in (1, 2) for i in range(10)])
    assert int(torch.where(others, scores, -1.0).argmax()) == 3


def test_sknn_samples_the_most_recent_and_keeps_the_k_most_similar():
    train = [[1, 10], [1, 20]]
    newer_first = SessionKNN.fit(train, 40, [5.0, 1.0], sample_size=1).scores([[1]])[0]
    assert newer_first[10] > 0 and newer_first[20] == 0
    newer_second = SessionKNN.fit(train, 40, [1.0, 5.0], sample_size=1).scores([[1]])[0]
    assert newer_second[10] == 0 and newer_second[20] > 0
    # k=1 keeps [1, 30] (cosine 1/sqrt 2) over [1, 31, 32, 33] (cosine 1/2), although the latter is newer.
    scores = SessionKNN.fit([[1, 30], [1, 31, 32, 33]], 40, k=1).scores([[1]])[0]
    assert scores[30] == pytest.approx(1 / math.sqrt(2)) and scores[31] == 0


# --------------------------------------------------------------------------------------------
# Item co-occurrence (association rules)


def reference_association_rules(train, num_items, pruning):
    """session-rec AssociationRules.fit: each click with each earlier click of its session, both ways."""
    rules = [[0] * num_items for _ in range(num_items)]
    for session in train:
        for j, item in enumerate(session):
            for earlier in session[:j]:
                rules[item][earlier] += 1
                rules[earlier][item] += 1
    if pruning:
        for row in rules:
            keep = sorted((i for i in range(num_items) if row[i] > 0), key=lambda i: (-row[i], i))[:pruning]
            for i in set(range(num_items)) - set(keep):
                row[i] = 0
    return torch.tensor(rules, dtype=torch.float32)


@pytest.mark.parametrize("pruning", [0, 3, 20])
def test_cooccurrence_matches_session_rec_loops(pruning):
    num_items = 15
    train = random_sessions(80, num_items, seed=5) + [[7, 7, 7]]  # re-clicks pair with themselves
    model = ItemCooccurrence.fit(train, num_items, pruning=pruning)
    torch.testing.assert_close(model.counts.to_dense(), reference_association_rules(train, num_items, pruning))


def test_cooccurrence_ranks_the_cooccurring_item_first():
    model = ItemCooccurrence.fit([[1, 2], [2, 1], [1, 3], [4, 5], [4, 5, 4]], 6)
    scores = model.scores([[5, 1], [1, 4], []])
    assert scores[0].argmax() == 2 and scores[0, 2] == 2 and scores[0, 3] == 1 and scores[0, 4] == 0
    assert scores[1].argmax() == 5  # only the LAST item counts: 4 -> 5 (3 pairs), 4 -> 4 (2 pairs)
    assert scores[1, 5] == 3 and scores[1, 4] == 2
    assert scores[2].sum() == 0


# --------------------------------------------------------------------------------------------
# The real sample


@pytest.mark.skipif(not YOOCHOOSE.is_dir(), reason=f"YOOCHOOSE sample not at {YOOCHOOSE} (set RECSERVE_DATA_DIR)")
def test_sknn_beats_popularity_on_yoochoose():
    from benchmarks.yoochoose_data import yoochoose_sessions
    from benchmarks.yoochoose_next_item import popularity_scores

    data = yoochoose_sessions(DATA_DIR)
    cases = next_item_cases(data.test_sessions[:1000])  # about 3,000 cases, a few seconds
    popularity = popularity_scores(data)
    knn = SessionKNN.fit(data.train_sessions, data.num_items, data.train_session_times)
    pop = evaluate_next_item(lambda prefixes: popularity.expand(len(prefixes), -1), cases, data.num_items)
    sknn = evaluate_next_item(knn.scores, cases, data.num_items)
    # Measured on all 10,152 cases: popularity 0.089, SKNN 0.639 Recall@20.
    assert pop["recall@20"] < 0.2
    assert sknn["recall@20"] > pop["recall@20"] + 0.3
    assert sknn["mrr@20"] > 3 * pop["mrr@20"]


def test_excluded_items_cannot_outrank_the_target():
    scores = torch.tensor([[0.9, 0.5, 0.1]])
    plain, masked = NextItemAccumulator(3, ks=(1,)), NextItemAccumulator(3, ks=(1,))
    plain.add(scores, torch.tensor([1]))
    masked.add(scores, torch.tensor([1]), exclude=[[0]])
    assert plain.result()["recall@1"] == 0.0 and masked.result()["recall@1"] == 1.0
    assert scores[0, 0] == 0.9  # the caller's scores are left as they were
