"""The A/B switch and the fusion strategy of /v1/recommend, without Ray: the assignment's split and
stability, the overrides, and the ingress's fusion path on stand-in model handles with a real ranker.
The HTTP path (a share changed by `serve deploy`, fusion served end to end) is tests/test_ingress_serving.py.
"""

from __future__ import annotations

import pytest
import torch

from deployments.caches import CatalogSnapshot, ItemMeta, PerUserCache, SeenItems
from deployments.contract import TGN_HISTORY_REASON, Candidates, ModelStatus
from deployments.ingress import Ingress, IngressConfig, IngressUserConfig, ServedFusion
from deployments.schemas import RecommendBatchRequest, RecommendRequest
from fusion.assignment import ABSettings, assign, bucket
from fusion.ranker import CONTEXT_FEATURES, AttentionFusion, FusionContext, FusionScorer
from tests.ingress_stand_ins import Counter, Method, fields_of_422, run

USERS = [f"user-{n}" for n in range(10_000)]


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 0.9])
def test_split_over_10000_users_is_within_2_percent_of_the_share(share):
    settings = ABSettings(fusion_share=share)
    in_fusion = sum(assign(settings, user) == "fusion" for user in USERS) / len(USERS)
    assert abs(in_fusion - share) <= 0.02


def test_a_users_arm_is_stable_and_a_larger_share_only_moves_users_into_fusion():
    half = ABSettings(fusion_share=0.5)
    first = {user: assign(half, user) for user in USERS}
    assert all(assign(half, user) == arm for user, arm in first.items())
    more = ABSettings(fusion_share=0.7)
    assert all(assign(more, user) == "fusion" for user, arm in first.items() if arm == "fusion")
    assert assign(ABSettings(fusion_share=0.0), "anyone") == "cascade"
    assert assign(ABSettings(fusion_share=1.0), "anyone") == "fusion"


def test_a_new_salt_draws_a_new_assignment():
    old = [bucket("experiment-1", user) < 0.5 for user in USERS]
    new = [bucket("experiment-2", user) < 0.5 for user in USERS]
    agreement = sum(a == b for a, b in zip(old, new)) / len(USERS)
    assert 0.45 < agreement < 0.55  # independent draws agree half the time


# -- the ingress's recommend path, on stand-ins -----------------------------------------------------


class Model:
    def __init__(self, answer=None, error=None, delay_s=0.0):
        self.recommend = Method(answer, error, delay_s)


class Metrics:
    def __init__(self) -> None:
        self.requests, self.stage_latency, self.fallthroughs = Counter(), Counter(), Counter()

    def count_cache(self, cache: str, arm: str, hits: int, misses: int) -> None:
        pass


def candidates(source: str, *item_ids: str) -> Candidates:
    return Candidates.of(source, item_ids, [1.0 - n / 10 for n in range(len(item_ids))], f"{source} says")


class IngressUnderTest:
    recommend = Ingress.func_or_class.recommend
    recommend_batch = Ingress.func_or_class.recommend_batch
    _arm = Ingress.func_or_class._arm
    _recommend_cached = Ingress.func_or_class._recommend_cached
    _recommend = Ingress.func_or_class._recommend
    _fusion = Ingress.func_or_class._fusion
    _stage = Ingress.func_or_class._stage
    _exclusions = Ingress.func_or_class._exclusions
    _enriched = Ingress.func_or_class._enriched
    _seen_items = Ingress.func_or_class._seen_items
    _known_session_items = Ingress.func_or_class._known_session_items
    _count_request = Ingress.func_or_class._count_request
    served_version = Ingress.func_or_class.served_version

    def __init__(self, models: dict, fusion_share: float = 0.0, ranker: AttentionFusion | None = None):
        self.models = models
        self.statuses = {name: ModelStatus(model=name, loaded=True, version="v1") for name in models}
        self.config = IngressConfig(cascade=list(models), result_cache_ttl_s=0)
        self.ab = IngressUserConfig(fusion_share=fusion_share)
        self.fusion = ServedFusion("f1", FusionScorer(ranker), 5) if ranker is not None else None
        self.metrics = Metrics()
        self.seen = SeenItems(lambda user: ["x1", "x2", "x3"], max_users=10, ttl_s=60)
        self.results = PerUserCache(10, 0)
        catalog = {f"i{n}": ItemMeta(f"Item {n}", "P", "c") for n in range(10)}
        self.catalog = CatalogSnapshot(lambda: catalog, lambda ids: {}, refresh_s=60)
        run(self.catalog.refresh())

    async def model_statuses(self) -> dict[str, ModelStatus]:
        return self.statuses


SOURCES = ["tgn", "lightgcn", "popularity"]


def fusion_ingress(**overrides) -> IngressUnderTest:
    models = {
        "tgn": Model(candidates("tgn", "i1", "i2")),
        "lightgcn": Model(candidates("lightgcn", "i2", "i3", "i4")),
        "popularity": Model(candidates("popularity", "i5", "i2", "i6")),
        **overrides,
    }
    return IngressUnderTest(models, fusion_share=1.0, ranker=AttentionFusion(SOURCES))


def test_fusion_ranks_the_union_and_reports_contributions_that_add_up():
    ingress = fusion_ingress()
    response = run(ingress.recommend(RecommendRequest(user_id="u1", k=4)))
    assert (response.strategy, response.arm) == ("fusion", "fusion")
    assert response.items[0].item_id == "i2"  # the one item all three sources returned
    for item in response.items:
        assert item.contributions is not None and set(item.contributions) == set(SOURCES)
        assert sum(item.contributions.values()) == pytest.approx(item.score, abs=1e-4)
        assert item.source in SOURCES and item.reason == f"{item.source} says"
    assert [a.model for a in response.models_tried] == [*SOURCES, "fusion"]
    assert response.model_versions["fusion"] == "f1"
    # Every source was asked at once, for the artifact's candidates per source (at least k).
    assert all(m.recommend.calls[0].k == 5 for m in ingress.models.values())


def test_a_failing_source_gets_no_weight_and_the_others_still_serve():
    ingress = fusion_ingress(lightgcn=Model(error=RuntimeError("boom")))
    response = run(ingress.recommend(RecommendRequest(user_id="u1", k=3)))
    outcomes = {a.model: a.outcome for a in response.models_tried}
    assert outcomes == {"tgn": "served", "lightgcn": "error", "popularity": "served", "fusion": "served"}
    assert all("lightgcn" not in item.contributions for item in response.items)
    assert ingress.metrics.fallthroughs.counts[(("arm", "fusion"), ("reason", "error"), ("stage", "lightgcn"))] == 1


def ranker_ignoring(source: str) -> AttentionFusion:
    """A ranker whose attention gives `source` a weight near 0 in every context (and the others equal shares)."""
    ranker = AttentionFusion(SOURCES)
    with torch.no_grad():
        ranker.query[-1].weight.zero_()
        ranker.query[-1].bias.fill_(1.0)
        ranker.keys.zero_()
        ranker.keys[SOURCES.index(source)] = -40.0  # logit -10 against 0: weight e^-10 of the others'
    return ranker


def test_a_source_the_ranker_hardly_weighs_is_not_asked():
    ingress = fusion_ingress()
    ingress.fusion = ServedFusion("f1", FusionScorer(ranker_ignoring("lightgcn")), 5)
    response = run(ingress.recommend(RecommendRequest(user_id="u1", k=3)))
    outcomes = {a.model: a.outcome for a in response.models_tried}
    assert outcomes == {"tgn": "served", "lightgcn": "low_weight", "popularity": "served", "fusion": "served"}
    assert ingress.models["lightgcn"].recommend.calls == []
    assert all("lightgcn" not in item.contributions for item in response.items)
    assert ingress.metrics.fallthroughs.counts[(("arm", "fusion"), ("reason", "low_weight"), ("stage", "lightgcn"))] == 1
    # 0 turns the pruning off (the user_config's fusion_min_source_weight).
    ingress.ab = IngressUserConfig(fusion_share=1.0, fusion_min_source_weight=0.0)
    response = run(ingress.recommend(RecommendRequest(user_id="u2", k=3)))
    assert all(a.outcome == "served" for a in response.models_tried)


def test_tgn_is_asked_when_only_an_active_session_would_weigh_it():
    """Whether the session is active shows only in TGN's answer, so TGN counts with the weight an active
    session would give it."""
    ranker = AttentionFusion(SOURCES)
    session = CONTEXT_FEATURES.index("session_active")
    with torch.no_grad():
        ranker.query[0].weight.zero_()
        ranker.query[0].bias.zero_()
        ranker.query[0].weight[0, session] = 5.0  # query unit 0: on only with a session
        ranker.query[0].bias[1] = 1.0  # query unit 1: always on
        ranker.query[2].weight.zero_()
        ranker.query[2].weight[0, 0] = ranker.query[2].weight[1, 1] = 1.0
        ranker.query[2].bias.zero_()
        ranker.keys.zero_()
        ranker.keys[SOURCES.index("tgn")] = torch.tensor([40.0, -40.0] + [0.0] * (ranker.attention_dim - 2))
    no_session = FusionContext(history_length=5)
    answered = torch.tensor([[True, True, True]])
    assert ranker.attention(no_session.features()[None], answered)[0, 0] < 0.02
    with_session = FusionContext(history_length=5, session_active=True)
    assert ranker.attention(with_session.features()[None], answered)[0, 0] > 0.5
    scorer = FusionScorer(ranker)
    assert scorer.sources_worth_asking(no_session, SOURCES, 0.02) == set(SOURCES)
    # A source the ranker was not trained with is never asked; nor is one not available.
    assert scorer.sources_worth_asking(no_session, ["content", "popularity"], 0.02) == {"popularity"}


class ContextSpy(FusionScorer):
    """A ranker that records the context of each request it ranks."""

    def rank(self, lists, context, limit=None):
        self.contexts = [*getattr(self, "contexts", []), context]
        return super().rank(lists, context, limit)


@pytest.mark.parametrize(("reason", "active"), [("follows your current session", True), (TGN_HISTORY_REASON, False)])
def test_fusion_asks_tgn_whatever_the_session_and_reads_the_session_from_its_reason(reason, active):
    tgn = Candidates.of("tgn", ["i1"], [1.0], reason)
    ingress = fusion_ingress(tgn=Model(tgn))
    ingress.fusion = ServedFusion("f1", ContextSpy(AttentionFusion(SOURCES)), 5)
    response = run(ingress.recommend(RecommendRequest(user_id="u1", k=3)))
    assert "i1" in [item.item_id for item in response.items]
    assert ingress.models["tgn"].recommend.calls[0].session_only is False
    assert ingress.fusion.ranker.contexts[0].session_active is active
    # The cascade keeps the session rule.
    cascade = run(ingress.recommend(RecommendRequest(user_id="u2", k=3, strategy="cascade")))
    assert cascade.strategy == "cascade" and ingress.models["tgn"].recommend.calls[1].session_only is True


def test_without_a_fusion_artifact_the_fusion_arm_serves_the_cascade_and_says_so():
    models = {"lightgcn": Model(candidates("lightgcn", "i2", "i3")), "popularity": Model(candidates("popularity", "i5"))}
    ingress = IngressUnderTest(models, fusion_share=1.0, ranker=None)
    response = run(ingress.recommend(RecommendRequest(user_id="u1", k=3)))
    assert (response.strategy, response.arm) == ("cascade", "fusion")
    assert response.models_tried[0].model == "fusion" and response.models_tried[0].outcome == "not_loaded"
    assert [i.item_id for i in response.items] == ["i2", "i3", "i5"]


def test_the_field_or_the_header_overrides_the_arm():
    ingress = fusion_ingress()
    ingress.ab = IngressUserConfig(fusion_share=0.0)
    assert run(ingress.recommend(RecommendRequest(user_id="u1"))).arm == "cascade"
    forced = run(ingress.recommend(RecommendRequest(user_id="u1", strategy="fusion")))
    assert (forced.strategy, forced.arm) == ("fusion", "override")
    by_header = run(ingress.recommend(RecommendRequest(user_id="u1"), x_recserve_strategy="fusion"))
    assert (by_header.strategy, by_header.arm) == ("fusion", "override")
    requests = ingress.metrics.requests.counts
    assert any(dict(tags)["arm"] == "override" and dict(tags)["strategy"] == "fusion" for tags in requests)


def test_batch_answers_each_request_in_order():
    ingress = fusion_ingress()
    batch = RecommendBatchRequest(requests=[RecommendRequest(user_id=f"u{n}", k=n + 1) for n in range(3)])
    answers = run(ingress.recommend_batch(batch)).responses
    assert [a.user_id for a in answers] == ["u0", "u1", "u2"] and [len(a.items) for a in answers] == [1, 2, 3]


def test_batch_bounds():
    assert fields_of_422({"requests": []}, RecommendBatchRequest) == ["requests"]
    too_many = {"requests": [{"user_id": "u"}] * 33}
    assert fields_of_422(too_many, RecommendBatchRequest) == ["requests"]
    assert fields_of_422({"requests": [{"user_id": "u", "k": 0}]}, RecommendBatchRequest) == ["requests.0.k"]
