"""`recserve train fusion`: the attention-fusion ranker (fusion/ranker.py) stacked on the served models' own
candidate lists, trained on the validation period and measured on the test period.

Sources are the serving cascade's stages, in its order: tgn, hgt, lightgcn, content, popularity. Each is
fitted with its own pipeline's code on the events before a cutoff and gives, per request, its top
`candidates_per_source` items with its scores, the user's earlier items left out. A source that cannot
answer a request (an unknown user, a user without content signal) gives no list, as at serving.

One request per evaluated user, the same for the cascade and for fusion, at the user's first event of the
evaluated period:

    time            the time of that event
    history_length  the user's events before it
    session_active  their last earlier event is at most `session_gap_s` (1800 s) before it
    device          the device of their last earlier event (None when it has none, or there is none)

TGN gives the cascade its list only with an active session, as at serving (the cascade's TGN stage). Fusion
gets TGN's list whatever the session, as fusion/parallel.py asks TGN, and `session_active` in the context.
Every source is frozen at the cutoff; TGN's query time is the request's, but its memory holds no event
after the cutoff.

Stacking, with no period used twice:

    A. Sources fitted on the train period. One example per user active in the validation period
       (returning users, and with `cold_users` also users new in it, as serving sees both): their lists,
       their context, and their relevant validation items as positives (graph_builders.splits:
       weight >= 1, items known before the period, not the user's earlier items). The ranker is trained
       on them (fusion/training.py); its epoch is chosen on a held-out share of these users, on which every
       method is also measured (`FusionRun.validation`: the figures to choose settings by).
    B. Sources fitted on train + validation (the protocol's history). Every method is measured on the
       test period with the shared protocol (pipelines/protocol.py: full ranking, earlier items masked,
       returning users' new relevant items): each source alone (on every user it can answer, TGN too),
       the cascade (tgn with an active session -> hgt -> lightgcn -> content -> popularity, each stage
       adding its items not yet chosen until K are filled, as fusion/cascade.py), fusion (the union
       scored by the ranker; items outside it score -inf), and the baselines popularity and item-kNN.

The served artifact is the stage-A ranker, the one stage B measured. It holds no source weights: at serving
the sources are the deployed models, trained by their own pipelines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from fusion.ranker import (
    MIN_SOURCE_WEIGHT,
    SESSION_SOURCE,
    AttentionFusion,
    FusionContext,
    FusionScorer,
    Ranked,
    evidence_arrays,
)
from fusion.training import FusionExample, FusionTrainingConfig, FusionTrainingResult, train_fusion
from graph_builders.bipartite import BipartiteGraph, csr_from_indices, item_id_order
from graph_builders.edge_weights import EdgeWeights, aggregate_interactions, interaction_key
from graph_builders.heterogeneous import build_hetero_graph
from graph_builders.splits import evaluation_targets
from models.content import ItemTextVectors, TextEncoder, catalogue_texts, user_vectors
from models.evaluation import csr_rows, evaluate_full_ranking, metrics_from_topk
from models.hgt_serving import UserContext
from models.hgt_training import HGTConfig
from models.item_index import ItemIndex
from models.lightgcn_training import LightGCNConfig
from models.popularity import PopularityModel
from models.tgn_training import TGNConfig, train_tgn
from pipelines.content import ContentOptions, previous_cache
from pipelines.hgt import HGTOptions, fit_selected, serving_index
from pipelines.lightgcn import fit_on, holdout_edges
from pipelines.protocol import EVAL_KS, RankingProtocol, TrainingData, baseline_metrics, data_window
from pipelines.tgn import SESSION_GAP_S, tgn_stream
from stores.artifacts import ArtifactStore, Manifest

log = logging.getLogger(__name__)

Source = Literal["tgn", "hgt", "lightgcn", "content", "popularity"]
SOURCES: tuple[Source, ...] = ("tgn", "hgt", "lightgcn", "content", "popularity")  # the cascade's order
WEIGHTS = EdgeWeights()  # every source's, as in their own pipelines
MIN_WEIGHT = 1.0  # a relevant item: evaluation_targets' threshold (one click; not an impression or a low rating)
EVERY_SOURCE = "fusion (every source asked)"  # fusion without the ranker's low-weight pruning
# `fusion_min_source_weight` values (the ingress allows 0 to 0.2) whose quality the offline run reports.
SOURCE_WEIGHT_SWEEP = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)
NESTED = ("lightgcn", "hgt", "tgn", "content", "training")
Scorer = Callable[[Sequence["Request"]], Tensor]  # [B, items of the fit graph]; an all -inf row: no answer


class FusionOptions(BaseModel):
    """`recserve train fusion --set KEY=VALUE` settings. A nested setting takes JSON and changes only the
    keys it names: `--set hgt='{"max_epochs": 2}'`."""

    model_config = ConfigDict(extra="forbid")

    sources: list[Source] = Field(default_factory=lambda: list(SOURCES), description="in the cascade's order")
    # 50, not 100: the same validation quality (BENCHMARKS.md), half the candidates to move and score per request.
    candidates_per_source: int = Field(default=50, ge=1, description="N: the length of each source's list")
    session_gap_s: float = Field(default=SESSION_GAP_S, gt=0, description="an earlier event this recent: session active")
    cold_users: bool = Field(default=True, description="stage A also learns from users new in the validation period")
    validation_fraction: float = Field(default=0.1, ge=0, lt=1,
                                       description="LightGCN and HGT: held-out edges to choose the epoch; 0 = none")
    lightgcn: LightGCNConfig = Field(default_factory=lambda: LightGCNConfig(time_budget_s=60.0))
    # HGT's default batch of 256 edges costs about a minute an epoch on MovieLens-100K; fusion fits it twice.
    hgt: HGTConfig = Field(default_factory=lambda: HGTConfig(batch_size=1024, max_epochs=6, time_budget_s=180.0))
    tgn: TGNConfig = Field(default_factory=lambda: TGNConfig(max_epochs=3, time_budget_s=120.0))
    content: ContentOptions = Field(default_factory=lambda: ContentOptions(progress=False))
    training: FusionTrainingConfig = Field(default_factory=FusionTrainingConfig)
    device: str = Field(default="cpu", description="torch device of the sources' training")

    @model_validator(mode="before")
    @classmethod
    def _merge_nested(cls, values: Any) -> Any:
        if isinstance(values, dict):
            values = dict(values)
            for name in NESTED:
                if isinstance(values.get(name), dict):
                    default = cls.model_fields[name].default_factory()
                    values[name] = {**default.model_dump(), **values[name]}
        return values

    @model_validator(mode="after")
    def _one_device(self) -> FusionOptions:
        for name in ("lightgcn", "hgt", "tgn", "content"):
            setattr(self, name, getattr(self, name).model_copy(update={"device": self.device}))
        return self


@dataclass(frozen=True)
class Request:
    """One evaluated user's request (see the module docstring)."""

    user: str
    at: pd.Timestamp
    context: FusionContext
    attributes: Mapping[str, Any]  # the users frame's attrs: HGT places a new user from them
    positives: frozenset[str]  # their relevant items in the period


# --- requests -------------------------------------------------------------------------------------------


def new_user_targets(earlier: pd.DataFrame, period: pd.DataFrame) -> pd.DataFrame:
    """(user_key, item_id) relevant pairs of users with no earlier event, on items known before the period."""
    keys = interaction_key(period)
    fresh = period[~keys.isin(set(interaction_key(earlier).dropna())).to_numpy() & keys.notna().to_numpy()]
    relevant = aggregate_interactions(fresh, WEIGHTS.without_decay())
    relevant = relevant[(relevant["weight"] >= MIN_WEIGHT) & relevant["item_id"].isin(set(earlier["item_id"].dropna()))]
    return relevant[["user_key", "item_id"]].reset_index(drop=True)


def period_requests(earlier: pd.DataFrame, period: pd.DataFrame, targets: pd.DataFrame, users: pd.DataFrame,
                    session_gap_s: float) -> list[Request]:
    """One request per user of `targets`, at their first event of `period` (module docstring), sorted by user."""
    first = pd.Series(pd.to_datetime(period["ts"], utc=True).array, index=interaction_key(period).to_numpy())
    first = first.groupby(level=0).min()
    before = pd.DataFrame({"user": interaction_key(earlier).to_numpy(), "ts": pd.to_datetime(earlier["ts"], utc=True).array,
                           "device": earlier["device"].astype(object).to_numpy()}).dropna(subset=["user"])
    counts = before["user"].value_counts()
    last = before.sort_values("ts", kind="stable").drop_duplicates("user", keep="last").set_index("user")
    attrs = dict(zip(users["user_id"].astype(object), users["attrs"])) if "attrs" in users else {}
    positives = targets.groupby("user_key")["item_id"].agg(frozenset)
    requests = []
    for user, items in positives.items():
        at = pd.Timestamp(first[user])
        history = int(counts.get(user, 0))
        device, active = None, False
        if history:
            device = last.at[user, "device"] if isinstance(last.at[user, "device"], str) else None
            active = (at - last.at[user, "ts"]).total_seconds() <= session_gap_s
        context = FusionContext(history_length=history, session_active=active, device=device, time=at.to_pydatetime())
        cell = attrs.get(user)
        requests.append(Request(str(user), at, context, cell if isinstance(cell, dict) else {}, items))
    return requests


# --- sources ---------------------------------------------------------------------------------------------


@dataclass
class FitPeriod:
    """The events a stage's sources are fitted on, with their user-item graph (users, items, seen mask)."""

    events: pd.DataFrame
    graph: BipartiteGraph


def known_user_scorer(graph: BipartiteGraph, score_rows: Callable[[Tensor], Tensor],
                      answers: Tensor | None = None) -> Scorer:
    """A scorer for models of the graph's own users: `score_rows(user rows) -> [n, items]`; others get no
    answer, and so do users where `answers` (per graph user) is False."""

    def score(batch: Sequence[Request]) -> Tensor:
        out = torch.full((len(batch), graph.num_items), float("-inf"))
        rows = torch.tensor([graph.user_index.get(r.user, -1) for r in batch], dtype=torch.long)
        known = rows >= 0
        if answers is not None:
            known &= answers[rows.clamp(min=0)]
        if known.any():
            out[known] = score_rows(rows[known]).float()
        return out

    return score


def lightgcn_scorer(period: FitPeriod, data: TrainingData, options: FusionOptions) -> Scorer:
    """LightGCN as `recserve train lightgcn` selects it (epoch chosen on held-out edges of the period)."""
    graph, evaluate = period.graph, None
    if options.validation_fraction > 0:
        graph, held = holdout_edges(period.graph, options.validation_fraction, options.lightgcn.seed)
        evaluate = lambda emb: evaluate_full_ranking(emb.scores, graph.seen, held, ks=(20,)).as_dict()  # noqa: E731
    embeddings = fit_on(graph, options.lightgcn, evaluate).embeddings.to("cpu")
    return known_user_scorer(period.graph, embeddings.scores)


def hgt_scorer(period: FitPeriod, data: TrainingData, options: FusionOptions) -> Scorer:
    """HGT as served (models/hgt_serving.py): a known user by Z_u . Z_i, a new one from their device and
    attributes (the meta-paths device/attribute -> users -> items)."""
    hetero = build_hetero_graph(period.events, data.items, data.users, WEIGHTS)
    if hetero.node_ids["item"] != period.graph.item_ids:
        raise RuntimeError("the heterogeneous and bipartite graphs order items differently")
    settings = HGTOptions(**options.hgt.model_dump(), validation_fraction=options.validation_fraction, refit=False)
    result = fit_selected(hetero, settings)
    index = serving_index(hetero, result, data.items)

    def score(batch: Sequence[Request]) -> Tensor:
        out = torch.full((len(batch), period.graph.num_items), float("-inf"))
        with torch.no_grad():
            for row, request in enumerate(batch):
                user = UserContext(user_id=request.user, device=request.context.device, attributes=request.attributes)
                found = index.user_scores(user)
                if found is not None:
                    out[row] = found[0]
        return out

    return score


def tgn_scorer(period: FitPeriod, data: TrainingData, options: FusionOptions) -> Scorer:
    """TGN trained on the period's event stream (a fixed number of epochs: the next period is the one
    evaluated, so there is none to choose on), its memory at the cutoff, queried at the request's time."""
    items = ItemIndex.from_items(sorted(period.events["item_id"].astype(str).unique()), data.items)
    keys = interaction_key(data.events).dropna().astype(str).unique().tolist()
    nodes = {key: len(items) + i for i, key in enumerate(keys)}
    stream = tgn_stream(period.events, nodes, items.index, WEIGHTS)
    model = train_tgn(stream, len(items), len(nodes), options.tgn, progress=False).model.to("cpu")
    columns = torch.tensor([period.graph.item_index[item] for item in items.item_ids], dtype=torch.long)
    with torch.no_grad():
        item_vectors = model.item_vectors()

    def score(batch: Sequence[Request]) -> Tensor:
        out = torch.full((len(batch), period.graph.num_items), float("-inf"))
        node = torch.tensor([nodes.get(r.user, -1) for r in batch], dtype=torch.long)
        asked = (node >= 0).nonzero().view(-1)
        asked = asked[model.has_interactions(node[asked])]
        if asked.numel():
            at = torch.tensor([int(batch[i].at.timestamp()) for i in asked.tolist()], dtype=torch.long)
            queries = model.user_vectors(node[asked], at)
            out[asked.unsqueeze(1), columns.unsqueeze(0)] = queries @ item_vectors.T
        return out

    return score


@dataclass
class TextVectors:
    """MiniLM vectors of every catalogue item (centred, unit length), encoded once for both stages."""

    position: dict[str, int]
    vectors: Tensor

    @classmethod
    def encode(cls, data: TrainingData, encoder: TextEncoder, options: ContentOptions,
               cache: Mapping[str, Any] | None = None) -> TextVectors:
        """`cache`: text hash -> vector of this encoder (the content artifact's): those texts are not encoded again."""
        item_ids = item_id_order(data.items, data.events)
        texts = catalogue_texts(data.items, item_ids)
        raw, reused = encoder.encode_cached(texts, cache, batch_size=options.batch_size, progress=options.progress)
        log.info("fusion: %d item texts embedded (%d re-used)", len(texts), reused)
        return cls({item: i for i, item in enumerate(item_ids)}, ItemTextVectors.build(encoder.fingerprint, texts, raw).items())


def content_scorer(period: FitPeriod, text: TextVectors, options: ContentOptions) -> Scorer:
    """The content retriever: a user is the weighted mean of their items' MiniLM vectors (weights decayed
    with the content options' half-life); a user with no positive interaction has no content signal and
    gets no list."""
    graph = BipartiteGraph.from_events(period.events, None, EdgeWeights(half_life_days=options.half_life_days))
    if graph.user_ids != period.graph.user_ids:  # the same events, so the same sorted users
        raise AssertionError("the content graph orders users differently")
    items = text.vectors[torch.tensor([text.position[item] for item in period.graph.item_ids], dtype=torch.long)]
    cols = torch.tensor([period.graph.item_index[item] for item in graph.item_ids], dtype=torch.long)
    users = user_vectors(graph.user_item_csr(), items[cols])
    return known_user_scorer(period.graph, lambda rows: users[rows] @ items.T, answers=users.abs().sum(1) > 0)


def popularity_scorer(period: FitPeriod) -> Scorer:
    """Popularity on the request's device when it has that device's counts, else overall (as served)."""
    model = PopularityModel.fit(period.events, period.graph.item_ids, WEIGHTS)
    return lambda batch: torch.stack([model.scores(r.context.device) for r in batch])


def candidate_lists(scorer: Scorer, requests: Sequence[Request], graph: BipartiteGraph, n: int,
                    batch_size: int = 256) -> dict[str, Ranked]:
    """Each request's top `n` (item_id, score), its user's earlier items left out; no entry where the
    source has no answer."""
    lists: dict[str, Ranked] = {}
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        scores = scorer(batch).nan_to_num(nan=float("-inf"), neginf=float("-inf"))  # (nan_to_num alone makes -inf finite)
        rows = torch.tensor([graph.user_index.get(r.user, -1) for r in batch], dtype=torch.long)
        known = (rows >= 0).nonzero().view(-1)
        local, cols = csr_rows(graph.seen, rows[known])
        scores[known[local], cols] = float("-inf")
        values, top = torch.topk(scores, min(n, scores.size(1)), dim=1)
        for request, row_values, row_items in zip(batch, values.tolist(), top.tolist()):
            ranked = [(graph.item_ids[i], v) for v, i in zip(row_values, row_items) if v != float("-inf")]
            if ranked:
                lists[request.user] = ranked
    return lists


@dataclass
class StageLists:
    """Every source's candidate lists for a stage's requests."""

    requests: list[Request]
    graph: BipartiteGraph
    lists: dict[str, dict[str, Ranked]]  # source -> user -> ranked
    seconds: dict[str, float]  # source -> fit and list seconds

    def cascaded(self, request: Request) -> dict[str, Ranked]:
        """What the cascade gets for `request`: TGN's list only with an active session."""
        return {source: ranked for source, ranked in self.fused(request).items()
                if source != SESSION_SOURCE or request.context.session_active}

    def fused(self, request: Request) -> dict[str, Ranked]:
        """What the ranker gets for `request` when it asks every source: each list there is for the user
        (TGN's whatever the session, as fusion asks it; the context says whether the session is active)."""
        return {source: by_user[request.user] for source, by_user in self.lists.items() if request.user in by_user}

    def asked(self, request: Request, ranker: FusionScorer, min_weight: float = MIN_SOURCE_WEIGHT) -> dict[str, Ranked]:
        """What the served ranker gets: `fused`, less the sources it does not ask in this context
        (fusion/parallel.py)."""
        lists = self.fused(request)
        worth = ranker.sources_worth_asking(request.context, list(lists), min_weight)
        return {source: ranked for source, ranked in lists.items() if source in worth}


def fit_sources(period: FitPeriod, requests: list[Request], data: TrainingData, options: FusionOptions,
                text: TextVectors | None, name: str) -> StageLists:
    lists, seconds = {}, {}
    for source in options.sources:
        started = time.perf_counter()
        if source == "lightgcn":
            scorer = lightgcn_scorer(period, data, options)
        elif source == "hgt":
            scorer = hgt_scorer(period, data, options)
        elif source == "tgn":
            scorer = tgn_scorer(period, data, options)
        elif source == "content":
            scorer = content_scorer(period, text, options.content)
        else:
            scorer = popularity_scorer(period)
        lists[source] = candidate_lists(scorer, requests, period.graph, options.candidates_per_source)
        seconds[source] = round(time.perf_counter() - started, 1)
        log.info("fusion %s: %s fitted on %d events, lists for %d of %d requests (%.0f s)", name, source,
                 len(period.events), len(lists[source]), len(requests), seconds[source])
    return StageLists(requests, period.graph, lists, seconds)


# --- methods ---------------------------------------------------------------------------------------------


def cascade(lists: Mapping[str, Ranked], order: Sequence[str], k: int) -> list[str]:
    """fusion/cascade.py offline: each stage in order adds its items not yet chosen until k are filled."""
    chosen: dict[str, None] = {}
    for source in order:
        for item_id, _ in lists.get(source, ()):
            if len(chosen) >= k:
                return list(chosen)
            chosen.setdefault(item_id)
    return list(chosen)


def rankings(stage: StageLists, model: AttentionFusion, sources: Sequence[str], k: int) -> dict[str, dict[str, list[str]]]:
    """method -> user -> ranked item ids: each source alone (every user it answers, whatever the
    session), the cascade (its first k), and fusion (the whole union, ranked), as served (sources
    under the attention threshold not asked) and with every source asked."""
    out = {source: {user: [item for item, _ in ranked] for user, ranked in by_user.items()}
           for source, by_user in stage.lists.items()}
    out["cascade"] = {r.user: cascade(stage.cascaded(r), sources, k) for r in stage.requests}
    ranker = FusionScorer(model)
    out["fusion"] = fusion_rankings(stage, ranker)
    out[EVERY_SOURCE] = fusion_rankings(stage, ranker, min_weight=0.0)
    return out


def fusion_rankings(stage: StageLists, ranker: FusionScorer, min_weight: float = MIN_SOURCE_WEIGHT) -> dict[str, list[str]]:
    """user -> fusion's ranked item ids as served with `fusion_min_source_weight` = `min_weight` (0 asks every source)."""
    return {r.user: [item for item, _, _ in ranker.rank(stage.asked(r, ranker, min_weight), r.context)]
            for r in stage.requests}


def source_weight_sweep(stage: StageLists, model: AttentionFusion, sources: Sequence[str], protocol: RankingProtocol,
                        weights: Sequence[float] = SOURCE_WEIGHT_SWEEP) -> dict[str, dict[str, float]]:
    """Fusion as served with each `fusion_min_source_weight`: the model calls per request (the sources worth
    asking in its context, of those loaded) and the test metrics. A higher weight asks fewer sources: the
    trade of quality for latency that the ingress's setting makes."""
    ranker = FusionScorer(model)
    out = {}
    for weight in weights:
        calls = [len(ranker.sources_worth_asking(r.context, sources, weight)) for r in stage.requests]
        out[f"{weight:g}"] = {"calls per request": float(np.mean(calls)),
                              **protocol.evaluate(ranking_scores(fusion_rankings(stage, ranker, weight), protocol.graph))}
    return out


def ranking_scores(ranked: Mapping[str, list[str]], graph: BipartiteGraph) -> Callable[[Tensor], Tensor]:
    """A protocol score function from ranked lists: descending scores down each list, -inf elsewhere."""

    def score(rows: Tensor) -> Tensor:
        out = torch.full((rows.numel(), graph.num_items), float("-inf"))
        for b, row in enumerate(rows.tolist()):
            columns = [graph.item_index[item] for item in ranked.get(graph.user_ids[row], ())]
            out[b, columns] = torch.arange(len(columns), 0, -1, dtype=torch.float32)
        return out

    return score


def request_metrics(ranked: Mapping[str, list[str]], requests: Sequence[Request], graph: BipartiteGraph,
                    ks: Sequence[int] = EVAL_KS) -> dict[str, float]:
    """The protocol's metrics on given requests (cold users too): each request's top max(ks) against its
    positives (earlier items are already out of every list)."""
    width = max(ks)
    top = torch.full((len(requests), width), -1, dtype=torch.long)
    rows, cols = [], []
    for j, request in enumerate(requests):
        items = [graph.item_index[item] for item in ranked.get(request.user, ())[:width]]
        top[j, : len(items)] = torch.tensor(items, dtype=torch.long)
        rows += [j] * len(request.positives)
        cols += [graph.item_index[item] for item in request.positives]
    positives = csr_from_indices(rows, cols, (len(requests), graph.num_items))
    return metrics_from_topk(top, positives, ks=ks).as_dict()


def attention_groups(model: AttentionFusion, stages: Sequence[StageLists]) -> dict[str, dict[str, float]]:
    """Mean attention weight per source by request context, with the number of requests in each group."""
    ranker = FusionScorer(model)
    groups: dict[str, list[np.ndarray]] = {}
    for stage in stages:
        for request in stage.requests:
            _, _, answered = evidence_arrays(stage.asked(request, ranker), ranker.sources)
            weights = ranker.attention(request.context.feature_array()[None], answered)[0]
            history = request.context.history_length
            if history == 0:
                group = "cold start"
            elif request.context.session_active:
                group = "session active"
            else:
                group = "no session, " + ("< 20 events" if history < 20 else "20-99 events" if history < 100 else "100+ events")
            groups.setdefault(group, []).append(weights)
    order = ["cold start", "session active", "no session, < 20 events", "no session, 20-99 events", "no session, 100+ events"]
    return {group: {**dict(zip(ranker.sources, np.mean(groups[group], axis=0).tolist())), "requests": len(groups[group])}
            for group in order if group in groups}


# --- the run ---------------------------------------------------------------------------------------------


@dataclass
class FusionRun:
    options: FusionOptions
    training: FusionTrainingResult
    metrics: dict[str, dict[str, float]]  # stage B, test period: method -> protocol metrics
    validation: dict[str, dict[str, float]]  # stage A, the users held out from training: method -> metrics
    attention: dict[str, dict[str, float]]  # context group -> source -> mean weight (both stages' requests)
    summary: dict[str, Any]
    source_weights: dict[str, dict[str, float]]  # fusion_min_source_weight -> calls per request and test metrics


def run_fusion(data: TrainingData, options: FusionOptions, text: TextVectors | None = None) -> FusionRun:
    """Stage A (train the ranker on the validation period), then stage B (measure on the test period).
    `text`: the catalogue's MiniLM vectors when the caller has them (encoded here otherwise)."""
    started = time.perf_counter()
    split = data.split
    if split.validation.empty:
        raise RuntimeError("fusion is trained on a validation period, and this split has none")
    if text is None and "content" in options.sources:
        encoder = TextEncoder(device=options.content.device, max_seq_length=options.content.max_seq_length)
        text = TextVectors.encode(data, encoder, options.content)

    # Stage A: sources on the train period, examples from the validation period.
    train = FitPeriod(split.train, BipartiteGraph.from_events(split.train, data.items, WEIGHTS))
    targets = evaluation_targets(split.train, split.validation, min_weight=MIN_WEIGHT)
    if options.cold_users:
        targets = pd.concat([targets, new_user_targets(split.train, split.validation)], ignore_index=True)
    stage_a = fit_sources(train, period_requests(split.train, split.validation, targets, data.users, options.session_gap_s),
                          data, options, text, "stage A")
    examples, example_requests = [], []
    for request in stage_a.requests:
        example = FusionExample.build(stage_a.fused(request), request.context, set(request.positives), options.sources)
        if example is not None:
            examples.append(example)
            example_requests.append(request)
    log.info("fusion stage A: %d examples of %d validation users (the others' lists hold none of their items)",
             len(examples), len(stage_a.requests))
    training = train_fusion(examples, options.sources, options.training)
    model = training.model
    held = [example_requests[i] for i in training.held_out]
    k = max(EVAL_KS)
    validation = {method: request_metrics(ranked, held, stage_a.graph)
                  for method, ranked in rankings(StageLists(held, stage_a.graph, stage_a.lists, {}), model,
                                                 options.sources, k).items()} if held else {}

    # Stage B: sources on the history, every method on the test period.
    protocol = RankingProtocol.build(data, WEIGHTS)
    history = data.history
    test_targets = evaluation_targets(history, split.test, min_weight=MIN_WEIGHT)
    stage_b = fit_sources(FitPeriod(history, protocol.graph),
                          period_requests(history, split.test, test_targets, data.users, options.session_gap_s),
                          data, options, text, "stage B")
    metrics = {method: protocol.evaluate(ranking_scores(ranked, protocol.graph))
               for method, ranked in rankings(stage_b, model, options.sources, k).items()}
    baselines = baseline_metrics(data, protocol)
    metrics["popularity (overall)"] = baselines["popularity"]
    metrics["item-knn"] = baselines["item-knn"]

    ranker = FusionScorer(model)

    def served_share(stage: StageLists, source: str) -> int:
        return sum(source in stage.asked(r, ranker) for r in stage.requests)

    summary = {
        "validation users (stage A)": len(stage_a.requests),
        "of them cold": sum(r.context.cold_start for r in stage_a.requests),
        "training examples": len(examples),
        "held-out examples (epoch choice, validation metrics)": len(held),
        "test users (stage B)": len(stage_b.requests),
        "items": protocol.graph.num_items,
        "test users with an active session": sum(r.context.session_active for r in stage_b.requests),
        "lists per source (stage B, as served)": {s: served_share(stage_b, s) for s in options.sources},
        "selected epoch": training.best_epoch,
        "epochs run": training.epochs_run,
        "source seconds (stage A)": stage_a.seconds,
        "source seconds (stage B)": stage_b.seconds,
        "total seconds": round(time.perf_counter() - started, 1),
    }
    attention = attention_groups(model, [stage_a, stage_b])
    log.info("fusion: test ndcg@20 %.4f (cascade %.4f), recall@20 %.4f (cascade %.4f), %.0f s",
             metrics["fusion"]["ndcg@20"], metrics["cascade"]["ndcg@20"], metrics["fusion"]["recall@20"],
             metrics["cascade"]["recall@20"], summary["total seconds"])
    return FusionRun(options, training, metrics, validation, attention, summary,
                     source_weight_sweep(stage_b, model, options.sources, protocol))


def train_fusion_artifact(data: TrainingData, artifacts: ArtifactStore, overrides: dict[str, Any]) -> Manifest:
    options = FusionOptions.model_validate(overrides)
    text = None
    if "content" in options.sources:
        # The content artifact, when trained first (as the demo does), already holds the catalogue's vectors.
        encoder = TextEncoder(device=options.content.device, max_seq_length=options.content.max_seq_length)
        cache = previous_cache(artifacts, encoder)[0] if options.content.reuse_previous else {}
        text = TextVectors.encode(data, encoder, options.content, cache)
    run = run_fusion(data, options, text)

    def build(folder: Path) -> None:
        run.training.model.save(folder, candidates_per_source=options.candidates_per_source,
                                session_gap_s=options.session_gap_s)

    history = [{"epoch": h["epoch"], "loss": h["train_loss"], "held-out loss": h["validation_loss"],
                **({"held-out ndcg@20": h["validation_ndcg@20"]} if "validation_ndcg@20" in h else {})}
               for h in run.training.history]
    attention = {group: ", ".join(f"{s} {weights[s]:.2f}" for s in options.sources) + f" ({weights['requests']} requests)"
                 for group, weights in run.attention.items()}
    return artifacts.publish(
        "fusion",
        build,
        {
            "data_window": data_window(data.events),
            "config": {
                **options.model_dump(),
                "edge_weights": WEIGHTS.model_dump(),
                "split": data.split_name,
                "summary": {**run.summary, **{f"attention ({group})": line for group, line in attention.items()}},
            },
            "metrics": {
                **run.metrics["fusion"],
                "baselines": {method: m for method, m in run.metrics.items() if method != "fusion"},
                "validation": run.validation,
                "source_weights": run.source_weights,
                "history": history,
            },
            "item_count": run.summary["items"],
            "user_count": run.summary["test users (stage B)"],
        },
    )
