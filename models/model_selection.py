"""The epoch loop the graph trainers share (LightGCN, HGT): train, evaluate every `eval_every` epochs,
keep the best state by a validation metric, stop after `patience` evaluations without improvement,
after `max_epochs`, or once `time_budget_s` of training time is spent.

Without an `evaluate` callback it trains to the end and the last state is the result.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SnapshotT = TypeVar("SnapshotT")


class StoppingRules(Protocol):
    max_epochs: int
    eval_every: int
    patience: int | None
    time_budget_s: float | None


@dataclass
class Checkpoint:
    epoch: int
    train_seconds: float  # training time so far, evaluation excluded
    loss: float
    metrics: dict[str, float]

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "train_seconds": round(self.train_seconds, 2), "loss": self.loss, **self.metrics}


@dataclass
class Selection(Generic[SnapshotT]):
    best_epoch: int
    snapshot: SnapshotT  # what the model serves with, taken at the best epoch
    history: list[Checkpoint] = field(default_factory=list)
    epochs_run: int = 0
    train_seconds: float = 0.0
    stopped_because: str = ""


def train_with_selection(
    model: torch.nn.Module,
    rules: StoppingRules,
    train_epoch: Callable[[int, float], float],
    snapshot: Callable[[], SnapshotT],
    evaluate: Callable[[SnapshotT], dict[str, float]] | None = None,
    monitor: str = "ndcg@20",
    name: str = "train",
) -> Selection[SnapshotT]:
    """`train_epoch(epoch, train_seconds_so_far)` runs one epoch and returns its mean loss; `snapshot()`
    computes what evaluation and serving use (eval mode). The model ends in eval mode with the best
    state loaded."""
    history: list[Checkpoint] = []
    train_seconds, epochs_run, stopped = 0.0, 0, ""
    best_metric, best_state, best_epoch, best_snapshot, stale = -math.inf, None, 0, None, 0
    progress = tqdm(range(1, rules.max_epochs + 1), desc=name, unit="epoch", mininterval=2.0)
    for epoch in progress:
        started = time.perf_counter()
        model.train()
        loss = train_epoch(epoch, train_seconds)
        train_seconds += time.perf_counter() - started
        epochs_run = epoch
        out_of_time = rules.time_budget_s is not None and train_seconds >= rules.time_budget_s
        progress.set_postfix(loss=f"{loss:.4f}", train_s=f"{train_seconds:.0f}")

        due = evaluate is not None and (epoch % rules.eval_every == 0 or epoch == rules.max_epochs or out_of_time)
        if not due:
            if evaluate is None:
                history.append(Checkpoint(epoch, train_seconds, loss, {}))
        else:
            model.eval()
            current = snapshot()
            metrics = evaluate(current)
            history.append(Checkpoint(epoch, train_seconds, loss, metrics))
            log.info("%s epoch %d  loss %.4f  %s  (%.0f s training)", name, epoch, loss,
                     "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("recall@20", "ndcg@20")),
                     train_seconds)
            if metrics[monitor] > best_metric:
                best_metric, stale = metrics[monitor], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_epoch, best_snapshot = epoch, current
            else:
                stale += 1
            if rules.patience is not None and stale >= rules.patience:
                stopped = f"no {monitor} improvement in {stale} evaluations"
                break
        if out_of_time:
            stopped = "time budget spent"
            break
    progress.close()
    model.eval()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:  # no evaluation: the last state is the result
        best_epoch, best_snapshot = epochs_run, snapshot()
    return Selection(best_epoch, best_snapshot, history, epochs_run, train_seconds, stopped or f"{epochs_run} epochs")
