import math

import pytest
import torch

from graph_builders.bipartite import csr_from_indices
from models.evaluation import evaluate_full_ranking, metrics_from_topk


def csr(pairs: list[tuple[int, int]], shape: tuple[int, int]) -> torch.Tensor:
    rows, cols = zip(*pairs) if pairs else ((), ())
    return csr_from_indices(torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long), shape)


def d(rank: int) -> float:
    return 1 / math.log2(rank + 1)


# 4 users x 5 items. User 2 has no test items and must be skipped.
SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5],  # train {0} masked -> ranking 1, 2, 3, 4; test {2, 4}
        [0.1, 0.2, 0.3, 0.4, 0.5],  # train {4}, the top score, masked -> ranking 3, 2, 1, 0; test {0, 3, 4}
        [0.0, 0.0, 0.0, 0.0, 9.9],  # no test items; would add item 4 to coverage@2 if evaluated
        [0.9, 0.8, 0.1, 0.2, 0.3],  # ranking 0, 1, 4, 3, 2; test {4}
    ]
)
TRAIN = csr([(0, 0), (1, 4), (2, 1)], (4, 5))
TEST = csr([(0, 2), (0, 4), (1, 0), (1, 3), (1, 4), (3, 4)], (4, 5))


def score_rows(users: torch.Tensor) -> torch.Tensor:
    return SCORES[users]


def test_hand_computed_metrics():
    metrics = evaluate_full_ranking(score_rows, TRAIN, TEST, ks=(2, 3))
    assert metrics.num_users == 3
    # K=2: user0 top [1, 2] hits rank 2; user1 top [3, 2] hits rank 1 (item 4 is masked); user3 top [0, 1] none.
    assert metrics.recall[2] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert metrics.ndcg[2] == pytest.approx((d(2) / (d(1) + d(2)) + d(1) / (d(1) + d(2)) + 0) / 3)
    assert metrics.mrr[2] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert metrics.hit_rate[2] == pytest.approx(2 / 3)
    assert metrics.coverage[2] == pytest.approx(4 / 5)  # {0, 1, 2, 3}
    # K=3: user3 now hits item 4 at rank 3; user1's IDCG covers min(3, 3) = 3 ranks.
    assert metrics.recall[3] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert metrics.ndcg[3] == pytest.approx((d(2) / (d(1) + d(2)) + d(1) / (d(1) + d(2) + d(3)) + d(3) / d(1)) / 3)
    assert metrics.mrr[3] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    assert metrics.hit_rate[3] == 1.0
    assert metrics.coverage[3] == 1.0
    assert metrics["recall@2"] == metrics.recall[2]


def test_train_item_with_top_score_never_counts():
    # User 0's only test item is also its train item and has the top score: masked, so no hit at all.
    train, test = csr([(0, 0)], (1, 5)), csr([(0, 0)], (1, 5))
    metrics = evaluate_full_ranking(lambda users: SCORES[users], train, test, ks=(1, 5))
    assert metrics.hit_rate[5] == 0.0
    assert metrics.coverage[5] == pytest.approx(4 / 5)  # the masked slot is neither a hit nor covered


def test_users_argument_restricts_evaluation():
    metrics = evaluate_full_ranking(score_rows, TRAIN, TEST, ks=(2,), users=torch.tensor([3, 2, 1]))
    assert metrics.num_users == 2
    assert metrics.recall[2] == pytest.approx((1 / 3 + 0) / 2)


def test_batch_size_does_not_change_results():
    torch.manual_seed(0)
    num_users, num_items = 53, 40
    scores = torch.randn(num_users, num_items)
    train = csr_from_indices(torch.randint(0, num_users, (200,)), torch.randint(0, num_items, (200,)), scores.shape)
    test = csr_from_indices(torch.randint(0, num_users, (150,)), torch.randint(0, num_items, (150,)), scores.shape)
    results = [
        evaluate_full_ranking(lambda u: scores[u], train, test, ks=(5, 20), batch_size=batch).as_dict()
        for batch in (1, 7, 4096)
    ]
    assert results[0] == results[1] == results[2]
    assert results[0]["recall@20"] > 0


def test_k_larger_than_catalogue_and_views_are_not_overwritten():
    popularity = torch.tensor([1.0, 2.0, 3.0])
    train, test = csr([(0, 2), (1, 0)], (2, 3)), csr([(0, 0), (1, 2)], (2, 3))
    metrics = evaluate_full_ranking(lambda u: popularity.expand(u.numel(), -1), train, test, ks=(10,))
    assert metrics.hit_rate[10] == 1.0
    assert metrics.recall[10] == 1.0
    assert torch.equal(popularity, torch.tensor([1.0, 2.0, 3.0]))  # the -inf mask went into a copy


def test_metrics_from_precomputed_topk_lists():
    topk = torch.tensor([[1, 2, -1], [3, 2, 1], [4, 4, 4], [0, 1, 4]])  # -1 = empty slot
    metrics = metrics_from_topk(topk, TEST, ks=(2, 3))
    assert metrics.num_users == 3
    assert metrics.recall[2] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert metrics.mrr[3] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    assert metrics.coverage[3] == 1.0
    with pytest.raises(ValueError, match="fewer than max"):
        metrics_from_topk(topk, TEST, ks=(20,))
