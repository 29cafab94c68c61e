"""The attention-fusion ranker and `recserve train fusion`: contributions, sources that did not answer,
learning which source to trust from the context, the saved module, the cascade emulation, and the
artifact trained on MovieLens-100K through the CLI."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
import torch

from fusion.ranker import MIN_SOURCE_WEIGHT, AttentionFusion, FusionContext, FusionScorer, evidence, read_config
from fusion.training import FusionExample, FusionTrainingConfig, train_fusion
from pipelines.fusion import SOURCE_WEIGHT_SWEEP, FusionOptions, cascade

SOURCES = ["tgn", "hgt", "lightgcn", "content", "popularity"]
NOON = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def randomised(sources=SOURCES, seed: int = 0) -> AttentionFusion:
    """A ranker with every parameter drawn at random, so no test passes on the neutral initial weights."""
    torch.manual_seed(seed)
    model = AttentionFusion(sources)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return model.eval()


def some_lists(sources=SOURCES, seed: int = 0, length: int = 15) -> dict[str, list[tuple[str, float]]]:
    rng = random.Random(seed)
    lists = {}
    for source in sources:
        items = rng.sample(range(40), length)  # overlapping lists, as real sources give
        scores = sorted((rng.gauss(0, 3) for _ in items), reverse=True)
        lists[source] = [(f"i{item}", score) for item, score in zip(items, scores)]
    return lists


def test_contributions_add_up_to_the_score_and_the_ranking_follows_it():
    model = randomised()
    context = FusionContext(history_length=12, session_active=True, device="ios", time=NOON)
    ranked = model.rank(some_lists(), context)
    union = {item for ranked_list in some_lists().values() for item, _ in ranked_list}
    assert {item for item, _, _ in ranked} == union
    for _, score, contributions in ranked:
        assert set(contributions) == set(SOURCES)
        assert sum(contributions.values()) == pytest.approx(score, abs=1e-4)
    scores = [score for _, score, _ in ranked]
    assert scores == sorted(scores, reverse=True)


def test_a_source_that_did_not_answer_gets_no_weight_and_no_contribution():
    model = randomised()
    lists = some_lists()
    lists["tgn"] = []  # answered nothing (no session)
    del lists["content"]  # not asked or failed
    context = FusionContext(history_length=3, device="web", time=NOON)
    ranked = model.rank(lists, context)
    assert all(set(contributions) == {"hgt", "lightgcn", "popularity"} for _, _, contributions in ranked)
    answered = torch.tensor([False, True, True, False, True])
    weights = model.attention(context.features()[None], answered[None])[0].detach()
    assert weights[0] == 0 and weights[3] == 0
    assert weights.sum() == pytest.approx(1.0)
    # Whatever the silent sources' parameters, the scores do not move.
    before = [score for _, score, _ in ranked]
    with torch.no_grad():
        model.relevance[[0, 3]] += 5.0
        model.keys[[0, 3]] *= -3.0
    assert [score for _, score, _ in model.rank(lists, context)] == pytest.approx(before)


def test_the_numpy_scorer_ranks_as_the_torch_module_scores():
    """The ingress ranks with `FusionScorer`; training and evaluation use the module's forward pass."""
    model = randomised(seed=5)
    lists = some_lists(seed=6)
    del lists["hgt"]
    context = FusionContext(history_length=40, session_active=True, device="tablet", time=NOON)
    items, item_evidence, answered = evidence(lists, SOURCES)
    with torch.no_grad():
        scores, contributions = model(context.features()[None], item_evidence[None], answered[None])
        weights = model.attention(context.features()[None], answered[None])[0]
    ranked = FusionScorer(model).rank(lists, context)
    expected = sorted(zip(items, scores[0].tolist()), key=lambda pair: -pair[1])
    assert [item for item, _, _ in ranked] == [item for item, _ in expected]
    assert [score for _, score, _ in ranked] == pytest.approx([score for _, score in expected], abs=1e-5)
    assert FusionScorer(model).attention(context.feature_array()[None], answered.numpy())[0] == pytest.approx(
        weights.numpy(), abs=1e-6)


def test_evidence_is_each_list_s_presence_z_score_and_reciprocal_rank():
    """`evidence` handles every list in one pass of array operations; this is the definition, list by list,
    over lists of every shape: missing, empty, of one item, of equal scores, overlapping."""
    rng = random.Random(11)
    for _ in range(100):
        lists = {}
        for source in SOURCES:
            if rng.random() < 0.2:
                continue  # did not answer
            ids = rng.sample(range(80), rng.choice([0, 1, 2, 10, 30]))
            equal = rng.random() < 0.1
            lists[source] = [(f"i{i}", 2.0 if equal else rng.uniform(-3, 3)) for i in ids]
        items, item_evidence, answered = evidence(lists, SOURCES)
        row = {item: n for n, item in enumerate(items)}
        assert items == list(dict.fromkeys(item for s in SOURCES for item, _ in lists.get(s, ())))
        assert answered.tolist() == [bool(lists.get(s)) for s in SOURCES]
        expected = torch.zeros_like(item_evidence)
        for s, source in enumerate(SOURCES):
            ranked = lists.get(source, [])
            scores = torch.tensor([score for _, score in ranked])
            spread = max(scores.std(unbiased=False).item(), 1e-6) if len(ranked) > 1 else 1.0
            for rank, (item, score) in enumerate(ranked, start=1):
                expected[row[item], s] = torch.tensor([1.0, (score - scores.mean().item()) / spread, 1.0 / rank])
        assert torch.allclose(item_evidence, expected, atol=1e-4)


def context_dependent_examples(count: int, seed: int) -> list[FusionExample]:
    """Both sources always answer with 20 of 200 items; the user's items are in TGN's list when the session
    is active and in popularity's otherwise, at random positions (rank and score say nothing), so only an
    attention that depends on the context can put them first."""
    rng = random.Random(seed)
    examples = []
    for n in range(count):
        active = n % 2 == 0
        tgn, popularity = (rng.sample(range(200), 20) for _ in range(2))
        popularity = [i + 200 for i in popularity]  # disjoint lists
        lists = {"tgn": [(f"i{i}", 20.0 - r) for r, i in enumerate(tgn)],
                 "popularity": [(f"i{i}", 1.0 / (r + 1)) for r, i in enumerate(popularity)]}
        positives = {f"i{i}" for i in rng.sample(tgn if active else popularity, 3)}
        context = FusionContext(history_length=rng.randint(1, 200), session_active=active, time=NOON)
        examples.append(FusionExample.build(lists, context, positives, ["tgn", "popularity"]))
    return examples


def test_training_flips_the_attention_with_the_session():
    examples = context_dependent_examples(400, seed=1)
    result = train_fusion(examples, ["tgn", "popularity"], FusionTrainingConfig(max_epochs=40, lr=0.03))
    answered = torch.tensor([[True, True]])
    active = result.model.attention(FusionContext(history_length=50, session_active=True, time=NOON).features()[None], answered)
    idle = result.model.attention(FusionContext(history_length=50, session_active=False, time=NOON).features()[None], answered)
    assert active[0, 0] > 0.9 and idle[0, 0] < 0.1, (active, idle)
    # The kept epoch is the one with the best held-out NDCG@20, and it beat the initial ranker's (epoch 0).
    ndcgs = [h["validation_ndcg@20"] for h in result.history]
    assert result.best_epoch > 0 and ndcgs[result.best_epoch - 1] == max(ndcgs)


def test_save_and_load_give_the_same_ranking(tmp_path):
    model = randomised(seed=3)
    model.save(tmp_path, candidates_per_source=50)
    loaded = AttentionFusion.load(tmp_path)
    context = FusionContext(history_length=0, device="android", time=NOON)
    lists = some_lists(seed=4)
    assert loaded.rank(lists, context) == model.rank(lists, context)
    assert read_config(tmp_path)["candidates_per_source"] == 50
    assert loaded.sources == SOURCES


def test_the_cascade_fills_from_each_stage_in_order_without_repeats():
    lists = {"hgt": [("a", 3.0), ("b", 2.0)], "lightgcn": [("b", 9.0), ("c", 8.0), ("d", 7.0)], "popularity": [("e", 1.0)]}
    assert cascade(lists, SOURCES, 4) == ["a", "b", "c", "d"]
    assert cascade(lists, SOURCES, 10) == ["a", "b", "c", "d", "e"]
    assert cascade({"tgn": [("x", 1.0)], **lists}, SOURCES, 2) == ["x", "a"]


def test_nested_settings_change_only_the_keys_they_name():
    options = FusionOptions.model_validate({"hgt": {"max_epochs": 1}, "device": "cpu"})
    assert options.hgt.max_epochs == 1
    assert options.hgt.batch_size == FusionOptions().hgt.batch_size  # fusion's default, not HGT's own
    with pytest.raises(ValueError):
        FusionOptions.model_validate({"sources": ["tgn", "item-knn"]})


# Small but real: every source of the cascade on MovieLens-100K, each cut to a few seconds.
QUICK = {
    "candidates_per_source": 50,
    "validation_fraction": 0.0,
    "lightgcn": {"max_epochs": 4},
    "hgt": {"max_epochs": 1, "batch_size": 4096, "hidden_channels": 16, "num_neighbors": [5, 3]},
    "tgn": {"max_epochs": 1, "batch_size": 2000, "memory_dim": 16, "time_dim": 8, "embedding_dim": 16},
    "content": {"max_seq_length": 16},  # MiniLM on 1,682 titles: half the time of their full 30-40 word pieces
    "training": {"max_epochs": 10},
}


@pytest.fixture(scope="module")
def movielens(dsn, data_dir, tmp_path_factory):
    """MovieLens-100K in a throwaway namespace, with its own artifact and state folders."""
    import uuid

    from pipelines.loading import load_into_store
    from stores.event_store import EventStore
    from stores.migrations import drop_namespace
    from stores.postgres import Database
    from stores.settings import Settings

    settings = Settings(database_url=dsn, namespace=f"t_fusion_{uuid.uuid4().hex[:8]}", data_dir=data_dir,
                        artifacts_dir=tmp_path_factory.mktemp("artifacts"), state_dir=tmp_path_factory.mktemp("state"))
    load_into_store("ml-100k", settings)
    yield settings
    drop_namespace(EventStore(Database(dsn, settings.namespace)).db)


def test_recserve_train_fusion_publishes_a_ranker_with_its_offline_comparison(movielens, monkeypatch, tmp_path, capsys):
    import json

    from pipelines import cli
    from stores.artifacts import ArtifactStore
    from stores.settings import get_settings

    for key, value in (("DATABASE_URL", movielens.database_url), ("RECSERVE_ARTIFACTS_DIR", str(movielens.artifacts_dir)),
                       ("RECSERVE_STATE_DIR", str(movielens.state_dir)), ("RECSERVE_DATA_DIR", str(movielens.data_dir))):
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    sets = [arg for key, value in QUICK.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    assert cli.main(["train", "fusion", "--namespace", movielens.namespace, *sets]) == 0
    assert cli.main(["evaluate", "fusion", "--namespace", movielens.namespace, "--out", str(tmp_path)]) == 0
    get_settings.cache_clear()

    artifacts = ArtifactStore(movielens.artifacts_dir, movielens.namespace)
    folder = artifacts.resolve("fusion")
    ranker = AttentionFusion.load(folder)
    assert ranker.sources == SOURCES
    assert read_config(folder)["candidates_per_source"] == 50
    manifest = artifacts.manifest("fusion")
    assert manifest.config["split"] == "temporal 70/10/20"
    compared = manifest.metrics["baselines"]
    assert {"cascade", "tgn", "hgt", "lightgcn", "content", "popularity", "item-knn"} <= set(compared)
    users = manifest.metrics["num_users"]
    assert users > 50 and all(m["num_users"] == users for m in compared.values())  # one protocol, the same users
    assert 0 < manifest.metrics["ndcg@20"] <= 1 and 0 < compared["cascade"]["ndcg@20"] <= 1
    assert not (folder / "embeddings.pt").exists()  # nothing to sync to the vector store
    # What each fusion_min_source_weight would cost: 0 asks all five sources, higher ones fewer.
    sweep = manifest.metrics["source_weights"]
    calls = [sweep[f"{weight:g}"]["calls per request"] for weight in sorted(SOURCE_WEIGHT_SWEEP)]
    assert calls[0] == len(SOURCES) and calls == sorted(calls, reverse=True) and calls[-1] >= 1
    assert sweep[f"{MIN_SOURCE_WEIGHT:g}"]["ndcg@20"] == pytest.approx(manifest.metrics["ndcg@20"])  # the default
    assert sweep["0"]["ndcg@20"] == pytest.approx(compared["fusion (every source asked)"]["ndcg@20"])
    report = (tmp_path / "report.md").read_text()
    assert "| fusion |" in report and "| cascade |" in report
    assert "fusion" in capsys.readouterr().out
