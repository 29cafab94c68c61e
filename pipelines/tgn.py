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

Items are those of the history (train + validation); events with other items are skipped by memory
until the next training.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch_geometric.data import TemporalData

from graph_builders.edge_weights import EdgeWeights, interaction_key
from graph_builders.temporal import build_temporal_stream
from models.cooccurrence import ItemCooccurrence
from models.item_index import ItemIndex
from models.next_item import NextItemAccumulator
from models.session_knn import SessionKNN
from models.tgn import TGNRecommender
from models.tgn_training import TGNConfig, replay, train_tgn
from pipelines.protocol import TrainingData, data_window
from stores.artifacts import ArtifactStore, Manifest, write_json

log = logging.getLogger(__name__)

KS = (10, 20)
SESSION_GAP_S = 1800


class TGNOptions(TGNConfig):
    """`recserve train tgn --set KEY=VALUE` settings."""

    session_gap_s: float = Field(default=SESSION_GAP_S, gt=0, description="idle gap that starts a new session")


def tgn_stream(events: pd.DataFrame, nodes: dict[str, int], items: dict[str, int], weights: EdgeWeights) -> TemporalData:
    """Events as a time-ordered stream in TGN's node layout (items first, then users)."""
    users = {key: node - len(items) for key, node in nodes.items()}
    stream = build_temporal_stream(events, users, items, weights).data
    stream.src = stream.src + len(items)
    stream.dst = stream.dst - len(users)
    return stream


class CaseLog:
    """Which stream events are next-interaction cases, and each case's current-session prefix.

    A case is an event whose user (or session) had an earlier event. Streams must be fed in order.
    """

    def __init__(self, num_nodes: int, gap_s: float):
        self.gap_s = gap_s
        self.session: dict[int, list[int]] = {}  # node -> items of its current session
        self.last_t: dict[int, int] = {}
        self.seen = torch.zeros(num_nodes, dtype=torch.bool)

    def feed(self, stream: TemporalData) -> tuple[torch.Tensor, list[list[int]]]:
        """(bool mask of the cases, their prefixes in case order), updating the log with the stream."""
        mask = torch.zeros(stream.num_events, dtype=torch.bool)
        prefixes = []
        for position, (node, item, t) in enumerate(zip(stream.src.tolist(), stream.dst.tolist(), stream.t.tolist())):
            if self.seen[node]:
                mask[position] = True
                current = self.session[node]
                # A returning user starting a new session: the baselines get their last item to go on.
                prefixes.append(list(current) if t - self.last_t[node] <= self.gap_s else current[-1:])
                if t - self.last_t[node] > self.gap_s:
                    current.clear()
            self.session.setdefault(node, []).append(item)
            self.last_t[node] = t
            self.seen[node] = True
        return mask, prefixes


def _session_lists(stream: TemporalData, gap_s: float) -> list[list[int]]:
    """Training sessions for the baselines: each user's events cut at gaps over gap_s."""
    sessions: dict[tuple[int, int], list[int]] = {}
    count: dict[int, int] = {}
    last: dict[int, int] = {}
    for node, item, t in zip(stream.src.tolist(), stream.dst.tolist(), stream.t.tolist()):
        if node in last and t - last[node] > gap_s:
            count[node] = count.get(node, 0) + 1
        last[node] = t
        sessions.setdefault((node, count.get(node, 0)), []).append(item)
    return list(sessions.values())


def stream_metrics(model: TGNRecommender, stream: TemporalData, mask: torch.Tensor, batch_size: int) -> dict[str, float]:
    accumulator = NextItemAccumulator(model.num_items, ks=KS)
    replay(model, stream, batch_size, mask, lambda scores, targets, _: accumulator.add(scores, targets))
    return accumulator.result()


def baseline_metrics(history: TemporalData, num_items: int, targets: torch.Tensor, prefixes: list[list[int]],
                     gap_s: float) -> dict[str, dict[str, float]]:
    sessions = _session_lists(history, gap_s)
    counts = torch.bincount(history.dst, minlength=num_items).float()
    scorers = {
        "popularity": lambda batch: counts.expand(len(batch), -1),
        "item co-occurrence": ItemCooccurrence.fit(sessions, num_items).scores,
        "session-kNN": SessionKNN.fit(sessions, num_items).scores,
    }
    results = {}
    for name, score in scorers.items():
        accumulator = NextItemAccumulator(num_items, ks=KS)
        for start in range(0, len(prefixes), 512):
            accumulator.add(score(prefixes[start:start + 512]), targets[start:start + 512])
        results[name] = accumulator.result()
    return results


def train_tgn_artifact(data: TrainingData, artifacts: ArtifactStore, overrides: dict[str, Any]) -> Manifest:
    options = TGNOptions.model_validate(overrides)
    config = TGNConfig.model_validate(options.model_dump(include=set(TGNConfig.model_fields)))
    weights = EdgeWeights()
    history = data.history
    items = ItemIndex.from_items(sorted(history["item_id"].astype(str).unique()), data.items)
    keys = interaction_key(data.events).dropna().astype(str).unique().tolist()
    nodes = {key: len(items) + i for i, key in enumerate(keys)}
    train, validation, test = (tgn_stream(part, nodes, items.index, weights)
                               for part in (data.split.train, data.split.validation, data.split.test))
    num_nodes = len(items) + len(nodes)

    validate = None
    if validation.num_events:
        validation_mask, _ = _cases_after(num_nodes, options.session_gap_s, [train], validation)
        validate = lambda model: stream_metrics(model, validation, validation_mask, config.batch_size)  # noqa: E731
    started = time.perf_counter()
    result = train_tgn(train, len(items), len(nodes), config, validate)

    # Test: the selected weights, state after train + validation, then the test stream scored.
    model = result.model
    replay(model, validation, config.batch_size)
    test_mask, prefixes = _cases_after(num_nodes, options.session_gap_s, [train, validation], test)
    metrics = stream_metrics(model, test, test_mask, config.batch_size)
    log.info("tgn: test %s", " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    history_stream = _concat(train, validation)
    baselines = baseline_metrics(history_stream, len(items), test.dst[test_mask], prefixes, options.session_gap_s)
    applied_through = data.through_event_id

    def build(folder: Path) -> None:
        torch.save({"config": config.model_dump(), "weights": model.weights(), "msg_dim": int(train.msg.size(1)),
                    "edge_weights": weights.model_dump()}, folder / "model.pt")
        torch.save({**model.state(), "applied_through": applied_through}, folder / "state.pt")
        write_json(folder / "users.json", {"user_keys": keys})
        items.save(folder)

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
                    "training seconds": round(time.perf_counter() - started, 1),
                    "protocol": "next interaction, streamed: each test event of a returning user or session "
                                "ranked from the state before it, then observed",
                    "test cases": int(test_mask.sum()),
                },
            },
            "metrics": {**metrics, "baselines": baselines, "history": history_rows},
            "item_count": len(items),
            "user_count": len(nodes),
        },
    )


def _cases_after(num_nodes: int, gap_s: float, before: list[TemporalData], stream: TemporalData):
    cases = CaseLog(num_nodes, gap_s)
    for earlier in before:
        cases.feed(earlier)
    return cases.feed(stream)


def _concat(*streams: TemporalData) -> TemporalData:
    return TemporalData(**{key: torch.cat([s[key] for s in streams]) for key in ("src", "dst", "t", "msg")})
