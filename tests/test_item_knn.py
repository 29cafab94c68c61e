"""Item-kNN: the similarity against a dense numpy reference, top-k pruning, scoring, persistence."""

import numpy as np
import pytest
import torch

from graph_builders.bipartite import csr_from_indices
from models import item_knn
from models.evaluation import evaluate_full_ranking
from models.item_knn import ItemKNN, gather_rows, item_similarity


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_interactions(users=40, items=30, density=0.2, seed=0, weighted=False):
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < density).astype(np.float64)
    if weighted:
        dense *= rng.uniform(0.5, 3.0, size=dense.shape)
    rows, cols = np.nonzero(dense)
    return dense, csr_from_indices(rows, cols, (users, items), dense[rows, cols])


def reference_similarity(dense: np.ndarray, shrink: float) -> np.ndarray:
    norms = np.sqrt((dense**2).sum(0))
    sim = (dense.T @ dense) / (np.outer(norms, norms) + shrink + 1e-300)
    np.fill_diagonal(sim, 0.0)
    return sim


def to_numpy(csr: torch.Tensor) -> np.ndarray:
    return csr.to_dense().numpy().astype(np.float64)


@pytest.mark.parametrize("shrink", [0.0, 5.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_full_similarity_is_symmetric_and_matches_numpy(shrink, weighted):
    dense, interactions = random_interactions(weighted=weighted)
    # A small block size makes the computation span several blocks, ragged last one included.
    sim = to_numpy(item_similarity(interactions, neighbors=None, shrink=shrink, block_size=7))
    np.testing.assert_allclose(sim, sim.T, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sim, reference_similarity(dense, shrink), rtol=1e-5, atol=1e-7)
    assert np.all(np.diag(sim) == 0)


def test_shrink_zero_is_normalized_gram_matrix():
    dense, interactions = random_interactions(seed=3)
    normalized = dense / np.linalg.norm(dense, axis=0, keepdims=True).clip(min=1e-12)
    expected = normalized.T @ normalized
    np.fill_diagonal(expected, 0.0)
    sim = to_numpy(item_similarity(interactions, neighbors=None, shrink=0.0))
    np.testing.assert_allclose(sim, expected, rtol=1e-5, atol=1e-7)


def test_block_size_does_not_change_the_result():
    _, interactions = random_interactions(users=60, items=45, seed=5)
    one_block = to_numpy(item_similarity(interactions, neighbors=6, shrink=2.0))
    for block_size in (1, 4, 44):
        np.testing.assert_array_equal(
            to_numpy(item_similarity(interactions, neighbors=6, shrink=2.0, block_size=block_size)), one_block
        )


@pytest.mark.parametrize("neighbors", [1, 5, 12])
def test_top_k_keeps_the_largest_neighbors_per_row(neighbors):
    dense, interactions = random_interactions(users=80, items=35, density=0.25, seed=1, weighted=True)
    full = reference_similarity(dense, shrink=1.0)
    pruned = item_similarity(interactions, neighbors=neighbors, shrink=1.0, block_size=8)
    counts = torch.diff(pruned.crow_indices()).numpy()
    available = (full > 0).sum(1)
    np.testing.assert_array_equal(counts, np.minimum(neighbors, available))
    kept = to_numpy(pruned)
    for item in range(full.shape[0]):
        expected = np.sort(full[item])[::-1][: counts[item]]
        np.testing.assert_allclose(np.sort(kept[item][kept[item] > 0])[::-1], expected, rtol=1e-5)
        # Every kept entry is the true similarity at that position.
        np.testing.assert_allclose(kept[item][kept[item] > 0], full[item][kept[item] > 0], rtol=1e-5)
    # Columns come out sorted within each row (a valid CSR for sparse products).
    crow, col = pruned.crow_indices(), pruned.col_indices()
    for item in range(full.shape[0]):
        row_cols = col[crow[item] : crow[item + 1]]
        assert torch.all(row_cols[1:] > row_cols[:-1])


def test_items_with_few_co_occurrences_keep_fewer_neighbors():
    # Item 0 co-occurs only with 1, item 1 with 0 and 2, item 2 only with 1; items 3 and 4 with nothing.
    rows, cols = [0, 0, 1, 1, 2], [0, 1, 1, 2, 3]
    interactions = csr_from_indices(rows, cols, (3, 5))
    pruned = item_similarity(interactions, neighbors=3, shrink=0.0)
    np.testing.assert_array_equal(torch.diff(pruned.crow_indices()).numpy(), [1, 2, 1, 0, 0])


@pytest.mark.parametrize("prune_by", ["target", "history"])
def test_scores_equal_interactions_times_similarity(prune_by):
    dense, interactions = random_interactions(users=25, items=20, seed=2, weighted=True)
    model = ItemKNN.fit(interactions, neighbors=4, shrink=3.0, prune_by=prune_by, block_size=6)
    pruned = to_numpy(item_similarity(interactions, neighbors=4, shrink=3.0))  # row i = i's neighbours
    # "target": column i of the scoring matrix holds item i's neighbours; "history": row i does.
    weights = pruned.T if prune_by == "target" else pruned
    np.testing.assert_allclose(to_numpy(model.similarity), weights, rtol=1e-6)
    assert not np.allclose(pruned, pruned.T)  # the two prunings really differ on this example
    expected = dense @ weights
    users = torch.tensor([3, 0, 24, 3, 11])
    got = model.scores(users)
    assert got.shape == (5, 20) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected[users.numpy()], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.scores(torch.arange(25)).numpy(), expected, rtol=1e-5, atol=1e-6)
    # Histories passed directly score the same as the stored ones.
    np.testing.assert_allclose(model.scores_for(interactions).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_other_layouts_and_index_dtypes_give_the_same_model():
    dense, interactions = random_interactions(users=20, items=15, seed=7)
    reference = ItemKNN.fit(interactions, neighbors=3, shrink=1.0).scores(torch.arange(20))
    int32 = torch.sparse_csr_tensor(
        interactions.crow_indices().int(), interactions.col_indices().int(), interactions.values(), (20, 15)
    )
    for variant in (torch.from_numpy(dense), interactions.to_sparse_coo(), int32):
        assert torch.equal(ItemKNN.fit(variant, neighbors=3, shrink=1.0).scores(torch.arange(20)), reference)


@pytest.mark.parametrize("limit", [1, 7, 50])
def test_chunked_scoring_matches_one_product(monkeypatch, limit):
    _, interactions = random_interactions(users=30, items=25, density=0.3, seed=8)
    model = ItemKNN.fit(interactions, neighbors=6, shrink=1.0)
    users = torch.tensor([4, 0, 29, 4, 17, 3, 8])
    whole = model.scores(users)
    monkeypatch.setattr(item_knn, "PRODUCT_ENTRIES", limit)
    assert torch.equal(model.scores(users), whole)


def test_gather_rows_matches_dense_indexing():
    dense, interactions = random_interactions(users=12, items=9, seed=4, weighted=True)
    rows = torch.tensor([5, 5, 0, 11, 2])
    np.testing.assert_allclose(to_numpy(gather_rows(interactions, rows)), dense[rows.numpy()], rtol=1e-6)
    assert gather_rows(interactions, torch.tensor([], dtype=torch.long)).shape == (0, 9)


def test_defaults():
    _, interactions = random_interactions(users=5, items=4)
    model = ItemKNN.fit(interactions)
    assert (model.neighbors, model.shrink, model.prune_by) == (100, 100.0, "target")


def test_user_without_history_scores_zero_and_empty_batch_works():
    interactions = csr_from_indices([0, 0, 2], [0, 1, 1], (3, 4))
    model = ItemKNN.fit(interactions, neighbors=2, shrink=0.0)
    assert torch.equal(model.scores(torch.tensor([1])), torch.zeros(1, 4))
    assert model.scores(torch.tensor([], dtype=torch.long)).shape == (0, 4)


def test_save_load_round_trips_identical_scores(tmp_path):
    _, interactions = random_interactions(users=50, items=40, seed=6)
    model = ItemKNN.fit(interactions, neighbors=5, shrink=10.0, prune_by="history")
    model.save(tmp_path)
    loaded = ItemKNN.load(tmp_path)
    assert (loaded.neighbors, loaded.shrink, loaded.prune_by) == (5, 10.0, "history")
    users = torch.arange(50)
    assert torch.equal(loaded.scores(users), model.scores(users))


def planted_groups(users_per_group=30, items_per_group=12, per_user=5, seed=0):
    """Two user groups, each interacting only with its own disjoint half of the catalogue."""
    rng = np.random.default_rng(seed)
    rows, cols, group_of_user = [], [], []
    for user in range(2 * users_per_group):
        group = user // users_per_group
        items = rng.choice(items_per_group, size=per_user, replace=False) + group * items_per_group
        rows += [user] * per_user
        cols += items.tolist()
        group_of_user.append(group)
    return np.array(rows), np.array(cols), np.array(group_of_user), items_per_group


def test_planted_groups_get_within_group_recommendations():
    rows, cols, group_of_user, items_per_group = planted_groups()
    num_users, num_items = len(group_of_user), 2 * items_per_group
    interactions = csr_from_indices(rows, cols, (num_users, num_items))
    model = ItemKNN.fit(interactions, neighbors=20, shrink=1.0)
    scores = model.scores(torch.arange(num_users))
    scores[torch.as_tensor(rows), torch.as_tensor(cols)] = float("-inf")  # unseen items only
    top = torch.topk(scores, 5, dim=1).indices.numpy()
    assert np.all(top // items_per_group == group_of_user[:, None])
    # No similarity crosses the groups at all.
    sim = to_numpy(model.similarity)
    assert np.all(sim[:items_per_group, items_per_group:] == 0) and np.all(sim[items_per_group:, :items_per_group] == 0)


def test_usable_as_evaluation_score_fn():
    """Held-out within-group items are found; the evaluator's masking leaves the model untouched."""
    rows, cols, group_of_user, items_per_group = planted_groups(per_user=6, seed=1)
    num_users, num_items = len(group_of_user), 2 * items_per_group
    held_out = np.arange(len(rows)) % 6 == 0  # one item per user goes to the test set
    train = csr_from_indices(rows[~held_out], cols[~held_out], (num_users, num_items))
    test = csr_from_indices(rows[held_out], cols[held_out], (num_users, num_items))
    model = ItemKNN.fit(train, neighbors=20, shrink=1.0)
    before = model.scores(torch.arange(num_users))
    metrics = evaluate_full_ranking(model.scores, train, test, ks=(5,), batch_size=7)
    assert metrics.num_users == num_users
    # Within a group of 12 items a user has 5 train items left: the test item is one of the 7 unseen in-group
    # items, all of which outrank every out-of-group item, so a top-5 list finds it well above chance (5/19).
    assert metrics.recall[5] > 0.5
    assert torch.equal(model.scores(torch.arange(num_users)), before)


@pytest.mark.parametrize(
    "kwargs", [{"neighbors": 0}, {"neighbors": -3}, {"shrink": -1.0}, {"block_size": 0}, {"prune_by": "rows"}]
)
def test_invalid_parameters_are_rejected(kwargs):
    _, interactions = random_interactions(users=5, items=4)
    with pytest.raises(ValueError):
        ItemKNN.fit(interactions, **kwargs)


def test_negative_interactions_are_rejected():
    interactions = csr_from_indices([0, 1], [0, 1], (2, 2), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        ItemKNN.fit(interactions)
