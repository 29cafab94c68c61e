"""`recserve train tgn`: next-interaction metrics streamed over the test period, then the served state.

1. Weights are trained on the train period's event stream; each epoch is scored on the validation
   period (streamed, memory updated as it goes) and the best epoch's weights are kept.
2. Test: the model replays train + validation, then streams the test period. Every test event of a
   user (or session) that has an earlier event is a case: the model ranks the catalogue from the
   state just before it, then observes it. That is what serving does, event by event.
3. Baselines on the same cases: popularity (history counts), item co-occurrence (last item) and
   session-kNN (the items of the current session: the user's events with no gap over 30 minutes).
4. The artifact holds the selected weights and the state after ALL events (the test stream was
   observed too), with the id of the last event it includes, so serving goes on from there.
5. For embedding sync it also holds `embeddings.pt` (see `tgn_embeddings`): the item vectors TGN scores
   the catalogue against and each known user's query vector at the artifact's last event.

Items are those of the history (train + validation); events with other items are skipped by memory
until the next training.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import Field
from torch_geometric.data import TemporalData

from graph_builders.edge_weights import EdgeWeights, epoch_seconds, interaction_key
from graph_builders.temporal import build_temporal_stream, session_sequences
from models.cooccurrence import ItemCooccurrence
from models.embeddings import UserItemEmbeddings
from models.item_index import ItemIndex
from models.next_item import NextItemAccumulator
from models.session_knn import SessionKNN
from models.tgn import TGNRecommender
from models.tgn_training import TGNConfig, TGNTrainingResult, replay, train_tgn
from pipelines.protocol import TrainingData, data_window
from stores.artifacts import ArtifactStore, Manifest, write_json

log = logging.getLogger(__name__)

KS = (10, 20)
SESSION_GAP_S = 1800


class TGNOptions(TGNConfig):
    """`recserve train tgn --set KEY=VALUE` settings."""

    session_gap_s: float = Field(default=SESSION_GAP_S, gt=0, description="idle gap that starts a new session")
    returning_only: bool = Field(default=False, description="offline cases only for users with events before the "
                                 "evaluated period (otherwise a user's or session's second event already counts)")
    mask_seen: bool = Field(default=False, description="offline metrics leave out each user's earlier items "
                            "(for data without repeat consumption, such as ratings)")


def tgn_stream(events: pd.DataFrame, nodes: dict[str, int], items: dict[str, int], weights: EdgeWeights) -> TemporalData:
    """Events as a time-ordered stream in TGN's node layout (items first, then users)."""
    users = {key: node - len(items) for key, node in nodes.items()}
    stream = build_temporal_stream(events, users, items, weights).data
    stream.src = stream.src + len(items)
    stream.dst = stream.dst - len(users)
    return stream


@dataclass
class Cases:
    """Next-interaction cases of one stream, in stream order."""

    mask: torch.Tensor  # [E] bool: which stream events are cases
    prefixes: list[list[int]]  # the items of the case's current session so far (for the session baselines)
    earlier: list[list[int]] | None  # every item the user had before the case, when kept (for masking)


class CaseLog:
    """Which stream events are next-interaction cases, with each case's session prefix (and, with
    `keep_earlier`, every earlier item of its user).

    A case is an event whose user (or session) had an earlier event; with `returning_only`, an earlier
    event in an earlier stream. Streams must be fed in order.
    """

    def __init__(self, gap_s: float, returning_only: bool = False, keep_earlier: bool = False):
        self.gap_s, self.returning_only, self.keep_earlier = gap_s, returning_only, keep_earlier
        self.session: dict[int, list[int]] = {}  # node -> items of its current session
        self.items: dict[int, list[int]] = {}  # node -> all its items
        self.last_t: dict[int, int] = {}

    def feed(self, stream: TemporalData) -> Cases:
        cases = Cases(torch.zeros(stream.num_events, dtype=torch.bool), [], [] if self.keep_earlier else None)
        returning = set(self.last_t)
        for position, (node, item, t) in enumerate(zip(stream.src.tolist(), stream.dst.tolist(), stream.t.tolist())):
            new_session = node in self.last_t and t - self.last_t[node] > self.gap_s
            if node in (returning if self.returning_only else self.last_t):
                cases.mask[position] = True
                current = self.session[node]
                # A returning user starting a new session: the baselines get their last item to go on.
                cases.prefixes.append(current[-1:] if new_session else list(current))
                if cases.earlier is not None:
                    cases.earlier.append(list(self.items[node]))
            if new_session:
                self.session[node].clear()
            self.session.setdefault(node, []).append(item)
            if self.keep_earlier:
                self.items.setdefault(node, []).append(item)
            self.last_t[node] = t
        return cases


def stream_metrics(model: TGNRecommender, stream: TemporalData, cases: Cases, batch_size: int,
                   exclude: list[list[int]] | None = None) -> dict[str, float]:
    """Replay `stream`, ranking each case from the state before it (see the module docstring)."""
    accumulator = NextItemAccumulator(model.num_items, ks=KS)
    case_row = torch.cumsum(cases.mask.long(), 0) - 1

    def sink(scores: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor) -> None:
        rows = case_row[positions].tolist()
        accumulator.add(scores, targets, exclude and [exclude[r] for r in rows])

    replay(model, stream, batch_size, cases.mask, sink)
    return accumulator.result()


def baseline_metrics(history: pd.DataFrame, items: ItemIndex, targets: torch.Tensor, cases: Cases, gap_s: float,
                     exclude: list[list[int]] | None = None) -> dict[str, dict[str, float]]:
    """Popularity, item co-occurrence and session-kNN, fitted on the history events, on the same cases."""
    sessions = [items.indices(session) for session in session_sequences(history, gap_minutes=gap_s / 60)["item_ids"]]
    counts = torch.bincount(torch.tensor(items.indices(history["item_id"].astype(str)), dtype=torch.long),
                            minlength=len(items)).float()
    scorers = {
        "popularity": lambda batch: counts.expand(len(batch), -1),
        "item co-occurrence": ItemCooccurrence.fit(sessions, len(items)).scores,
        "session-kNN": SessionKNN.fit(sessions, len(items)).scores,
    }
    return {name: score_cases(score, cases.prefixes, targets, len(items), exclude) for name, score in scorers.items()}


def score_cases(score, inputs: list, targets: torch.Tensor, num_items: int,
                exclude: list[list[int]] | None = None, batch_size: int = 512) -> dict[str, float]:
    """Next-item metrics of `score(inputs[batch]) -> [B, I]` over the cases."""
    accumulator = NextItemAccumulator(num_items, ks=KS)
    for start in range(0, len(inputs), batch_size):
        batch = slice(start, start + batch_size)
        accumulator.add(score(inputs[batch]), targets[batch], exclude and exclude[batch])
    return accumulator.result()


@dataclass
class NextItemRun:
    """A TGN trained and streamed over a namespace's split, with what the comparisons need."""

    options: TGNOptions
    result: TGNTrainingResult  # its model holds the state after ALL events
    items: ItemIndex
    nodes: dict[str, int]  # user key -> node id
    history: pd.DataFrame  # the train + validation events
    test: TemporalData
    cases: Cases
    metrics: dict[str, float]
    seconds: float

    @property
    def targets(self) -> torch.Tensor:
        return self.test.dst[self.cases.mask]

    @property
    def exclude(self) -> list[list[int]] | None:
        return self.cases.earlier


def run_next_item(data: TrainingData, options: TGNOptions, weights: EdgeWeights = EdgeWeights()) -> NextItemRun:
    """Train on the train period (selecting epochs on validation), then stream and score the test period."""
    config = TGNConfig.model_validate(options.model_dump(include=set(TGNConfig.model_fields)))
    items = ItemIndex.from_items(sorted(data.history["item_id"].astype(str).unique()), data.items)
    keys = interaction_key(data.events).dropna().astype(str).unique().tolist()
    nodes = {key: len(items) + i for i, key in enumerate(keys)}
    train, validation, test = (tgn_stream(part, nodes, items.index, weights)
                               for part in (data.split.train, data.split.validation, data.split.test))
    started = time.perf_counter()
    validate = None
    if validation.num_events:
        log_before = CaseLog(options.session_gap_s, options.returning_only, options.mask_seen)
        log_before.feed(train)
        validation_cases = log_before.feed(validation)
        validate = lambda model: stream_metrics(  # noqa: E731
            model, validation, validation_cases, config.batch_size, validation_cases.earlier)
    result = train_tgn(train, len(items), len(nodes), config, validate)

    # The selected weights, the state after train + validation, then the test stream scored and observed.
    replay(result.model, validation, config.batch_size)
    case_log = CaseLog(options.session_gap_s, options.returning_only, options.mask_seen)
    case_log.feed(train)
    case_log.feed(validation)
    cases = case_log.feed(test)
    metrics = stream_metrics(result.model, test, cases, config.batch_size, cases.earlier)
    log.info("tgn: test %s", " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return NextItemRun(options, result, items, nodes, data.history, test, cases, metrics,
                       time.perf_counter() - started)


def tgn_embeddings(model: TGNRecommender, nodes: dict[str, int], user_ids: set[str], at: int,
                   batch_size: int = 4096) -> tuple[list[str], UserItemEmbeddings]:
    """TGN's score as user and item vectors, for the vector store: `users @ items.T` is the score.

    TGN scores item i for user u as z_u . h_i (models/tgn.py), and that is exactly a dot product:
    - items: h_i = W_c (s_i + e_i) + b_c, the candidate vectors of the stored item memory plus identity
      embedding, the bias included, in the model's item order (items.json);
    - users: z_u, u's temporal attention over their recent items (plus their own memory) at time `at`
      (unix seconds; the artifact's last event), in the returned order.

    Nothing is left out of the product, but both sides are a snapshot: z_u depends on the query time
    (the ages of u's interactions) and on u's state, and serving recomputes it at request time, after
    every live event; item memories also move with each live interaction. The synced vectors are the
    model as it stood at its last training event.

    Users are the keys in `user_ids` (not anonymous sessions) whose node has at least one interaction in
    the model (events with items outside the catalogue are skipped), in node order.
    """
    keys = [key for key in nodes if key in user_ids]
    node_ids = torch.tensor([nodes[key] for key in keys], dtype=torch.long)
    known = model.has_interactions(node_ids)
    keys, node_ids = [key for key, keep in zip(keys, known.tolist()) if keep], node_ids[known]
    users = model.user_vectors(node_ids, at, batch_size)
    with torch.no_grad():
        items = model.item_vectors().cpu()
    return keys, UserItemEmbeddings(users, items)


def write_tgn_artifact(folder: Path, run: NextItemRun, weights: EdgeWeights, applied_through: int,
                       vectors_at: int, user_ids: list[str], embeddings: UserItemEmbeddings) -> None:
    """The files of a TGN artifact, as `deployments.tgn.LiveTGN.load` and the embedding sync read them: the model
    after every event of `run`, the log position it stands at, and the users' vectors at `vectors_at`."""
    model = run.result.model
    config = TGNConfig.model_validate(run.options.model_dump(include=set(TGNConfig.model_fields)))
    torch.save({"config": config.model_dump(), "weights": model.weights(), "msg_dim": int(run.test.msg.size(1)),
                "edge_weights": weights.model_dump()}, folder / "model.pt")
    torch.save({**model.state(), "applied_through": applied_through}, folder / "state.pt")
    # user_keys: every node (serving's id map); user_ids: the rows of embeddings.pt (embedding sync).
    write_json(folder / "users.json", {"user_keys": list(run.nodes), "user_ids": user_ids, "vectors_at": vectors_at})
    run.items.save(folder)
    embeddings.save(folder)


def train_tgn_artifact(data: TrainingData, artifacts: ArtifactStore, overrides: dict[str, Any]) -> Manifest:
    options = TGNOptions.model_validate(overrides)
    weights = EdgeWeights()
    run = run_next_item(data, options, weights)
    model, result, items = run.result.model, run.result, run.items
    baselines = baseline_metrics(run.history, items, run.targets, run.cases, options.session_gap_s, run.exclude)
    applied_through = data.through_event_id
    last_event = int(epoch_seconds(data.events["ts"]).max())
    user_ids, embeddings = tgn_embeddings(model, run.nodes, set(data.events["user_id"].dropna().astype(str)),
                                          last_event)

    def build(folder: Path) -> None:
        write_tgn_artifact(folder, run, weights, applied_through, last_event, user_ids, embeddings)

    history_rows = [{"epoch": r.epoch, "seconds": round(r.train_seconds, 2), "loss": r.loss,
                     **{f"validation {k}": v for k, v in r.metrics.items() if k in ("recall@20", "mrr@20")}}
                    for r in result.history]
    return artifacts.publish(
        "tgn",
        build,
        {
            "data_window": {**data_window(data.events), "applied_through_event_id": applied_through},
            "config": {
                **options.model_dump(),
                "edge_weights": weights.model_dump(),
                "split": data.split_name,
                "summary": {
                    "selected epoch": result.best_epoch,
                    "stopped": result.stopped_because,
                    "training seconds": round(run.seconds, 1),
                    "protocol": "next interaction, streamed: each test event of a returning user or session "
                                "ranked from the state before it, then observed",
                    "test cases": int(run.cases.mask.sum()),
                },
            },
            "metrics": {**run.metrics, "baselines": baselines, "history": history_rows},
            "item_count": len(items),
            "user_count": len(run.nodes),
        },
    )
