"""Training TGN on the chronological event stream, with a next-interaction objective.

Events are fed in time order, in batches. For each event (u, i, t) of a batch:

    loss = cross-entropy over the whole catalogue of  softmax_i(z_u(t) . h_i)

with z_u(t) computed from the state before the batch plus u's earlier events in the same batch (so the
attention always sees the exact prefix); then the batch is written to memory and history.
As in PyG's examples/tgn.py, memory is reset at the start of every epoch and gradients reach the GRU
through the pending messages of the previous batch.

Validation and test are streamed the same way in eval mode: score the batch's cases, then observe the
batch. That is exactly what serving does, event by event, so the offline figures include the online
memory updates.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch_geometric.data import TemporalData
from tqdm import tqdm

from models.tgn import TGNRecommender

log = logging.getLogger(__name__)

# Called with (scores [B, I], target items [B], positions of the scored events in the stream), on the CPU.
ScoreSink = Callable[[Tensor, Tensor, Tensor], None]


class TGNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    memory_dim: int = Field(default=100, ge=1)
    time_dim: int = Field(default=100, ge=1)
    embedding_dim: int = Field(default=100, ge=2)
    num_neighbors: int = Field(default=10, ge=1, description="recent interactions a query attends over")
    heads: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=200, ge=1, description="events per step")
    max_epochs: int = Field(default=20, ge=1)
    patience: int = Field(default=2, ge=1, description="epochs without a better validation MRR before stopping")
    time_budget_s: float | None = Field(default=None, gt=0, description="stop starting epochs after this long")
    seed: int = 0
    device: str = "cpu"

    def build(self, num_items: int, num_users: int, msg_dim: int) -> TGNRecommender:
        return TGNRecommender(num_items, num_users, msg_dim, self.memory_dim, self.time_dim, self.embedding_dim,
                              self.num_neighbors, self.heads, self.dropout)


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    train_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TGNTrainingResult:
    model: TGNRecommender  # best weights, state after replaying the training (and validation) stream
    best_epoch: int
    history: list[EpochRecord]
    train_seconds: float
    stopped_because: str


def batches(stream: TemporalData, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, stream.num_events)) for start in range(0, stream.num_events, size)]


def _batch(stream: TemporalData, start: int, end: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return stream.src[start:end], stream.dst[start:end], stream.t[start:end], stream.msg[start:end]


def settle(model: TGNRecommender) -> None:
    """Switch to eval mode, applying the messages training left pending to just their nodes.

    (`TGNMemory.train(False)` would run the GRU over every node, moving memories that had no message
    and zeroing their last-update times.)
    """
    memory = model.memory
    if memory.training:
        pending = {j for store in (memory.msg_s_store, memory.msg_d_store) for j, m in store.items() if m[0].numel()}
        if pending:
            with torch.no_grad():
                memory._update_memory(torch.tensor(sorted(pending), device=memory.device))
        memory._reset_message_store()
        memory.training = False  # so model.eval() below does not flush again
    model.eval()


def train_epoch(model: TGNRecommender, stream: TemporalData, optimizer: torch.optim.Optimizer, batch_size: int,
                progress: bool = False) -> float:
    model.train()
    model.reset_state()
    stream = stream.to(model.memory.device)
    total, count = 0.0, 0
    ranges = batches(stream, batch_size)
    for start, end in tqdm(ranges, desc="tgn epoch", unit="batch", disable=not progress, leave=False, mininterval=5):
        src, dst, t, msg = _batch(stream, start, end)
        optimizer.zero_grad()
        logits = model.batch_queries(src, dst, t, msg) @ model.item_vectors().T
        loss = F.cross_entropy(logits, dst)
        loss.backward()
        optimizer.step()
        model.observe(src, dst, t, msg)
        model.memory.detach()
        total += loss.item() * src.numel()
        count += src.numel()
    return total / max(count, 1)


@torch.no_grad()
def replay(model: TGNRecommender, stream: TemporalData, batch_size: int,
           score_mask: Tensor | None = None, sink: ScoreSink | None = None) -> None:
    """Observe a stream in eval mode; where `score_mask` is set, first score the event against the catalogue."""
    settle(model)
    device = model.memory.device
    stream = stream.to(device)
    score_mask = score_mask.to(device) if score_mask is not None else None
    for start, end in batches(stream, batch_size):
        src, dst, t, msg = _batch(stream, start, end)
        if sink is not None and score_mask is not None:
            scored = score_mask[start:end].nonzero().view(-1)
            if scored.numel():
                queries = model.batch_queries(src, dst, t, msg)[scored]
                scores = queries @ model.item_vectors().T
                sink(scores.cpu(), dst[scored].cpu(), scored.cpu() + start)
        model.observe(src, dst, t, msg)


def train_tgn(
    train: TemporalData,
    num_items: int,
    num_users: int,
    config: TGNConfig,
    validate: Callable[[TGNRecommender], dict[str, float]] | None = None,
    selection_metric: str = "mrr@20",
    progress: bool = True,
) -> TGNTrainingResult:
    """Train, keeping the weights of the epoch with the best validation `selection_metric`.

    `validate(model)` gets the model in eval mode holding the state after the training stream; it streams
    its own held-out events (and so changes that state). Without it the last epoch is kept.
    The returned model holds the best weights and the state after replaying `train`.
    """
    torch.manual_seed(config.seed)
    model = config.build(num_items, num_users, train.msg.size(1)).to(config.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    started = time.perf_counter()
    history: list[EpochRecord] = []
    best_weights, best_epoch, best_value, stale = None, 0, float("-inf"), 0
    stopped = f"max_epochs ({config.max_epochs})"
    for epoch in range(1, config.max_epochs + 1):
        loss = train_epoch(model, train, optimizer, config.batch_size, progress)
        settle(model)
        record = EpochRecord(epoch, loss, time.perf_counter() - started)
        if validate is not None:
            record.metrics = validate(model)
        history.append(record)
        value = record.metrics.get(selection_metric, -loss)
        log.info("tgn epoch %d: loss %.4f %s (%.0f s)", epoch, loss,
                 " ".join(f"{k} {v:.4f}" for k, v in record.metrics.items()), record.train_seconds)
        if value > best_value:
            best_weights, best_epoch, best_value, stale = copy.deepcopy(model.weights()), epoch, value, 0
        else:
            stale += 1
            if stale >= config.patience:
                stopped = f"no better validation {selection_metric} for {config.patience} epochs"
                break
        if config.time_budget_s is not None and time.perf_counter() - started > config.time_budget_s:
            stopped = f"time budget ({config.time_budget_s:.0f} s)"
            break
    model.load_weights(best_weights)
    model.reset_state()
    replay(model, train, config.batch_size)
    seconds = time.perf_counter() - started
    log.info("tgn: best epoch %d of %d (%s), %.0f s", best_epoch, len(history), stopped, seconds)
    return TGNTrainingResult(model, best_epoch, history, seconds, stopped)
