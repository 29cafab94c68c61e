"""TGN: the model's online updates, its guards against late and repeated events, and training."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import TemporalData

from graph_builders.temporal import MESSAGE_DIM
from models.next_item import NextItemAccumulator
from models.tgn import TGNRecommender
from models.tgn_training import TGNConfig, replay, train_tgn

NUM_ITEMS = 12


def small_model(num_users: int = 4) -> TGNRecommender:
    torch.manual_seed(0)
    model = TGNRecommender(NUM_ITEMS, num_users, MESSAGE_DIM, memory_dim=16, time_dim=8, embedding_dim=16, num_neighbors=5)
    model.eval()
    return model


def click(n: int = 1) -> torch.Tensor:
    msg = torch.zeros(n, MESSAGE_DIM)
    msg[:, 1] = 1.0
    return msg


def observe(model: TGNRecommender, user: int, item: int, t: int) -> None:
    model.observe(torch.tensor([NUM_ITEMS + user]), torch.tensor([item]), torch.tensor([t]), click())


def scores(model: TGNRecommender, user: int, t: int) -> torch.Tensor:
    with torch.no_grad():
        return model.user_queries(torch.tensor([NUM_ITEMS + user]), torch.tensor([t])) @ model.item_vectors().T


def test_new_interactions_change_the_scores_without_training():
    model = small_model()
    observe(model, 0, 3, 1000)
    before = scores(model, 0, 1100)
    observe(model, 0, 7, 1100)
    after = scores(model, 0, 1200)
    assert not torch.allclose(before, after)
    assert model.history.recent(torch.tensor([NUM_ITEMS])).items.tolist() == [7, 3]  # newest first


def test_a_late_event_does_not_rewind_memory_time():
    model = small_model()
    observe(model, 0, 3, 5000)
    observe(model, 0, 4, 1000)  # arrives after an event that happened later
    node = NUM_ITEMS
    assert int(model.memory.last_update[node]) == 5000
    assert int(model.memory.last_update[4]) == 5000
    assert torch.isfinite(model.memory.memory).all()


def test_batch_queries_see_the_exact_prefix_of_repeated_users():
    model = small_model()
    observe(model, 0, 1, 10)
    src = torch.tensor([NUM_ITEMS, NUM_ITEMS + 1, NUM_ITEMS, NUM_ITEMS])
    dst = torch.tensor([2, 5, 3, 4])
    t = torch.tensor([20, 21, 30, 40])
    recent = model.history.recent_with_batch(src, dst, t, click(4))
    by_query = {q: sorted(zip(recent.rank[recent.owner == q].tolist(), recent.items[recent.owner == q].tolist()))
                for q in range(4)}
    assert by_query[0] == [(0, 1)]
    assert by_query[1] == []
    assert by_query[2] == [(0, 2), (1, 1)]
    assert by_query[3] == [(0, 3), (1, 2), (2, 1)]


def test_grow_keeps_existing_state_and_makes_room():
    model = small_model(num_users=2)
    observe(model, 1, 6, 100)
    before = scores(model, 1, 200)
    model.grow(NUM_ITEMS + 10)
    observe(model, 9, 2, 150)
    after = scores(model, 1, 200)
    others = torch.arange(NUM_ITEMS) != 2
    assert torch.allclose(before[:, others], after[:, others])
    assert not torch.allclose(before[:, 2], after[:, 2])  # the new user's item moved in memory
    assert model.history.recent(torch.tensor([NUM_ITEMS + 9])).items.tolist() == [2]


def test_state_and_weights_round_trip():
    model = small_model()
    observe(model, 0, 3, 100)
    observe(model, 2, 8, 150)
    copy = small_model()
    torch.manual_seed(123)
    copy.load_weights(model.weights())
    copy.load_state(model.state())
    copy.eval()
    for user in (0, 2):
        assert torch.allclose(scores(model, user, 300), scores(copy, user, 300))


def test_a_state_loaded_into_a_new_model_survives_eval():
    # As serving loads an artifact: built (in training mode), weights and state loaded, then eval().
    model = small_model()
    observe(model, 0, 3, 100)
    observe(model, 2, 8, 150)
    copy = TGNRecommender(NUM_ITEMS, 4, MESSAGE_DIM, memory_dim=16, time_dim=8, embedding_dim=16, num_neighbors=5)
    copy.load_weights(model.weights())
    copy.load_state(model.state())
    copy.eval()
    assert torch.equal(copy.memory.memory, model.memory.memory)
    assert torch.equal(copy.memory.last_update, model.memory.last_update)
    for user in (0, 2):
        assert torch.allclose(scores(model, user, 300), scores(copy, user, 300))


def cyclic_stream(num_users: int, length: int, seed: int = 0) -> TemporalData:
    """Each user walks the items in a fixed cycle from a random start: the next item is learnable,
    the popular one is not (every item is equally popular)."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, NUM_ITEMS, (num_users,), generator=generator)
    rows = [(user, int(starts[user] + step) % NUM_ITEMS, step * 60 + user) for step in range(length) for user in range(num_users)]
    src, dst, t = zip(*sorted(rows, key=lambda r: r[2]))
    return TemporalData(src=torch.tensor(src) + NUM_ITEMS, dst=torch.tensor(dst), t=torch.tensor(t), msg=click(len(src)))


def test_training_learns_the_next_item_far_better_than_popularity():
    train, test = cyclic_stream(40, 8), cyclic_stream(20, 6, seed=1)
    test.src = test.src + 40  # new users, as in a session dataset
    config = TGNConfig(memory_dim=16, time_dim=8, embedding_dim=16, num_neighbors=4, lr=1e-2, batch_size=40, max_epochs=15)
    result = train_tgn(train, NUM_ITEMS, 60, config, progress=False)
    assert result.history[-1].loss < result.history[0].loss

    model = result.model
    accumulator = NextItemAccumulator(NUM_ITEMS, ks=(1,))
    seen = torch.zeros(NUM_ITEMS + 60, dtype=torch.bool)
    cases = torch.zeros(test.num_events, dtype=torch.bool)
    for position, node in enumerate(test.src.tolist()):
        cases[position], seen[node] = seen[node], True
    replay(model, test, 20, cases, lambda s, targets, _: accumulator.add(s, targets))
    # Popularity is uniform here, so it hits 1 in NUM_ITEMS at rank 1.
    assert accumulator.result()["recall@1"] > 0.5


def test_node_disjoint_runs_apply_exactly_like_one_event_at_a_time():
    from deployments.tgn import node_disjoint_runs

    src = torch.tensor([0, 1, 0, 2, 1, 3]) + NUM_ITEMS
    dst = torch.tensor([5, 6, 7, 7, 8, 9])
    t = torch.arange(6) * 10 + 100
    assert node_disjoint_runs(src, dst) == [(0, 2), (2, 3), (3, 6)]  # user 0 repeats, then item 7
    one_by_one, in_runs = small_model(), small_model()
    for i in range(6):
        one_by_one.observe(src[i:i + 1], dst[i:i + 1], t[i:i + 1], click())
    for start, end in node_disjoint_runs(src, dst):
        in_runs.observe(src[start:end], dst[start:end], t[start:end], click(end - start))
    assert torch.allclose(one_by_one.memory.memory, in_runs.memory.memory, atol=1e-6)


def test_live_state_applies_a_repeated_or_late_read_event_once():
    from datetime import UTC, datetime

    from deployments.tgn import LiveTGN
    from graph_builders.edge_weights import EdgeWeights
    from models.item_index import ItemIndex
    from stores.event_store import StoredEventRow

    items = ItemIndex([f"i{n}" for n in range(NUM_ITEMS)], [None] * NUM_ITEMS, [None] * NUM_ITEMS)
    live = LiveTGN(small_model(), items, {}, EdgeWeights(), applied_through=10)
    now = datetime.now(UTC)
    row = lambda event_id, item: StoredEventRow(event_id, "u1", item, None, "click", None, None, now)  # noqa: E731
    live.apply([row(11, "i1"), row(13, "i2")])  # 12 is not visible yet: waited for
    assert live.applied_through == 13 and set(live.waiting) == {12}
    edges = live.model.history.num_edges
    live.apply([row(11, "i1"), row(12, "i3"), row(13, "i2")])  # re-read: only 12 is new
    assert live.model.history.num_edges == edges + 1 and not live.waiting
    assert [i.item_id for i in live.sessions.state("u1", now).items] == ["i1", "i2", "i3"]


def test_a_user_out_of_session_is_answered_only_when_the_query_allows_it():
    """The cascade asks TGN with session_only (an idle user gets nothing, so it moves on); fusion asks
    without it and gets the user's memory, with a reason saying there was no active session."""
    from datetime import UTC, datetime, timedelta

    from deployments.contract import TGN_HISTORY_REASON, TGN_SESSION_REASON, ModelQuery
    from deployments.tgn import LiveTGN
    from graph_builders.edge_weights import EdgeWeights
    from models.item_index import ItemIndex
    from stores.event_store import StoredEventRow

    items = ItemIndex([f"i{n}" for n in range(NUM_ITEMS)], [None] * NUM_ITEMS, [None] * NUM_ITEMS)
    live = LiveTGN(small_model(), items, {}, EdgeWeights(), applied_through=0)
    now = datetime.now(UTC)
    clicked = now - timedelta(hours=2)
    live.apply([StoredEventRow(1, "u1", "i1", None, "click", None, None, clicked)])
    assert len(live.rank(ModelQuery(user_id="u1", k=3), now)) == 0
    answer = live.rank(ModelQuery(user_id="u1", k=3, session_only=False), now)
    assert len(answer) == 3 and set(answer.reasons) == {TGN_HISTORY_REASON}
    assert len(live.rank(ModelQuery(user_id="stranger", k=3, session_only=False), now)) == 0
    in_session = live.rank(ModelQuery(user_id="u1", k=3, session_only=False), clicked + timedelta(minutes=5))
    assert set(in_session.reasons) == {TGN_SESSION_REASON}


def test_case_log_marks_returning_events_with_their_session_prefix():
    from pipelines.tgn import CaseLog

    def stream(rows):
        src, dst, t = zip(*rows)
        return TemporalData(src=torch.tensor(src), dst=torch.tensor(dst), t=torch.tensor(t), msg=click(len(rows)))

    history = stream([(20, 1, 0), (20, 2, 60)])
    later = stream([(20, 3, 120), (21, 4, 130), (21, 5, 140), (20, 6, 5000)])  # user 20 idles past 30 min

    log = CaseLog(gap_s=1800, keep_earlier=True)
    log.feed(history)
    cases = log.feed(later)
    assert cases.mask.tolist() == [True, False, True, True]
    assert cases.prefixes == [[1, 2], [4], [3]]  # after the gap: just the last item to go on
    assert cases.earlier == [[1, 2], [4], [1, 2, 3]]

    returning = CaseLog(gap_s=1800, returning_only=True)
    returning.feed(history)
    assert returning.feed(later).mask.tolist() == [True, False, False, True]  # user 21 is new in this period


@pytest.fixture(scope="module")
def trained_artifact(tmp_path_factory):
    """A small TGN artifact trained on generated data, as `recserve train tgn` writes it."""
    from graph_builders.splits import temporal_split
    from pipelines.datasets import read_dataset
    from pipelines.protocol import TrainingData
    from pipelines.tgn import train_tgn_artifact
    from stores.artifacts import ArtifactStore

    dataset = read_dataset("demo", users=300, items=120, events=12_000, seed=5)
    data = TrainingData(dataset.events, dataset.items, dataset.users, temporal_split(dataset.events), "temporal 70/10/20")
    artifacts = ArtifactStore(tmp_path_factory.mktemp("artifacts"), "t_tgn")
    manifest = train_tgn_artifact(data, artifacts, {"max_epochs": 2, "memory_dim": 16, "time_dim": 8,
                                                    "embedding_dim": 16, "batch_size": 500})
    return data, manifest, artifacts.resolve("tgn", manifest.version)


def test_artifact_embeddings_are_the_models_own_scores(trained_artifact):
    from deployments.tgn import LiveTGN
    from models.embeddings import UserItemEmbeddings
    from models.item_index import ItemIndex
    from stores.artifacts import read_json

    data, _, folder = trained_artifact
    # What pipelines/embedding_sync reads: users.json's user_ids and items.json, row for row.
    embeddings = UserItemEmbeddings.load(folder)
    users = read_json(folder / "users.json")
    user_ids, items = users["user_ids"], ItemIndex.load(folder)
    assert embeddings.items.shape == (len(items), 16)
    assert embeddings.users.shape == (len(user_ids), 16)
    assert len(set(user_ids)) == len(user_ids) and set(user_ids) <= set(data.events["user_id"].astype(str))
    assert len(user_ids) > 0.9 * data.events["user_id"].nunique()  # users with no modelled event are left out

    # The served model, loaded from the artifact, scores the catalogue for a user at the artifact's time.
    live = LiveTGN.load(folder)
    at = torch.tensor([users["vectors_at"]])
    for row in (0, 1, len(user_ids) // 2, len(user_ids) - 1):
        with torch.no_grad():
            own = (live.model.user_queries(torch.tensor([live.nodes[user_ids[row]]]), at) @ live.item_vectors().T)[0]
        synced = embeddings.scores(torch.tensor([row]))[0]
        torch.testing.assert_close(synced, own, rtol=1e-4, atol=1e-5)
        assert synced.topk(10).indices.tolist() == own.topk(10).indices.tolist()


def test_user_vectors_in_batches_match_one_query_at_a_time():
    model = small_model()
    for user, item, t in [(0, 3, 100), (1, 5, 120), (0, 7, 130), (3, 1, 140)]:
        observe(model, user, item, t)
    nodes = torch.arange(4) + NUM_ITEMS
    vectors = model.user_vectors(nodes, 500, batch_size=3)
    for user in range(4):
        torch.testing.assert_close(vectors[user:user + 1] @ model.item_vectors().detach().T, scores(model, user, 500))
    assert model.has_interactions(nodes).tolist() == [True, True, False, True]
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.user_vectors(nodes, 500)
