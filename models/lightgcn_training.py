"""Training LightGCN: full-graph propagation each step, a ranking loss on a batch of positive edges.

Two objectives (`LightGCNConfig.loss`):

- "bpr" (the paper's, eq. 15): per positive (u, i), `bpr_negatives` items j drawn uniformly among the
  items u has NOT interacted with,

      L = -mean log sigmoid(y_ui - y_uj) + lambda * ||E^(0)_batch||^2 / B

  with the L2 term on the ego embeddings of the batch's users and items (PyG's `recommendation_loss`).
- "softmax" (sampled softmax, Wu et al. 2023, "On the Effectiveness of Sampled Softmax Loss for Item
  Recommendation"): cosine scores c (or dot products, `cosine=False`) over a temperature tau, each
  positive against `softmax_negatives` items drawn uniformly once per batch and shared by the whole batch
  (one matrix product),

      L = -mean log( exp(c_ui / tau) / (exp(c_ui / tau) + sum_j exp(c_uj / tau)) ) + L2 as above.

  A shared negative equal to the row's own positive is masked ("accidental hit"); another positive of the
  same user among them is left in, as in sampled-softmax practice (probability ~ degree / items). It learns
  more per propagation than BPR, which matters on a CPU where one propagation costs ~0.2 s at Gowalla
  scale. Measured on Gowalla (benchmarks/lightgcn_gowalla.py), cosine scores give the best Recall@20 per
  minute and dot products the better NDCG@20; see BENCHMARKS.md.

Model selection: every `eval_every` epochs the callback `evaluate(embeddings)` is called (validation
NDCG@20 in `recserve train`); the best state is kept and training stops after `patience` evaluations
without improvement, after `max_epochs`, or when `time_budget_s` is spent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from tqdm.auto import tqdm

from models.embeddings import UserItemEmbeddings
from models.lightgcn import LightGCN

log = logging.getLogger(__name__)


class LightGCNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedding_dim: int = Field(default=64, ge=1)
    num_layers: int = Field(default=3, ge=0)
    edge_values: Literal["binary", "weight"] = Field(
        default="weight", description="adjacency values: 1 per edge, or the decayed event weight W(u, i)"
    )
    loss: Literal["bpr", "softmax"] = "softmax"
    bpr_negatives: int = Field(default=1, ge=1, description="bpr: negatives per positive")
    softmax_negatives: int = Field(default=256, ge=1, description="softmax: negatives shared by the batch")
    temperature: float = Field(default=0.1, gt=0, description="softmax only")
    cosine: bool = Field(default=True, description="softmax only: cosine scores (else dot products)")
    batch_size: int = Field(default=16384, ge=1)
    lr: float = Field(default=5e-3, gt=0)
    lr_floor: float = Field(default=0.1, ge=0, le=1, description="cosine decay to lr * lr_floor over the run")
    l2: float = Field(default=1e-4, ge=0)
    max_epochs: int = Field(default=200, ge=1)
    eval_every: int = Field(default=2, ge=1, description="epochs between evaluations")
    patience: int | None = Field(default=5, ge=1, description="evaluations without improvement; None = never stop early")
    time_budget_s: float | None = Field(default=None, gt=0, description="stop after this much training time")
    seed: int = 0
    device: str = "cpu"

    @property
    def unit_vectors(self) -> bool:
        """Whether the served embeddings are normalised (the model was trained on cosine scores)."""
        return self.loss == "softmax" and self.cosine


@dataclass
class Checkpoint:
    epoch: int
    train_seconds: float  # training time so far, evaluation excluded
    loss: float
    metrics: dict[str, float]

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "train_seconds": round(self.train_seconds, 2), "loss": self.loss, **self.metrics}


@dataclass
class TrainingResult:
    model: LightGCN
    embeddings: UserItemEmbeddings  # of the best state
    best_epoch: int
    history: list[Checkpoint] = field(default_factory=list)
    epochs_run: int = 0
    train_seconds: float = 0.0
    stopped_because: str = ""


class NegativeSampler:
    """Uniform items outside each user's positives: rejection against the sorted (u, i) keys, then an
    exact draw from the complement for the few users whose rows keep hitting (near-complete histories)."""

    def __init__(self, edge_index: Tensor, num_items: int, generator: torch.Generator, max_rounds: int = 10):
        self.num_items = num_items
        self.keys = torch.sort(edge_index[0] * num_items + edge_index[1]).values
        self.generator = generator
        self.max_rounds = max_rounds

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users * self.num_items + items
        where = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        return self.keys[where] == keys

    def sample(self, users: Tensor, count: int) -> Tensor:
        """[len(users), count] item indices, none of them a positive of its row's user (a user with
        every item as a positive has no negative to give and gets uniform items)."""
        users = users.unsqueeze(1).expand(-1, count)
        items = torch.randint(self.num_items, users.shape, generator=self.generator)
        for _ in range(self.max_rounds):
            hit = self.is_positive(users, items)
            if not hit.any():
                return items
            items[hit] = torch.randint(self.num_items, (int(hit.sum()),), generator=self.generator)
        hit = self.is_positive(users, items)
        for user in users[hit].unique().tolist():
            rows = hit & (users == user)
            positives = self.keys[(self.keys >= user * self.num_items) & (self.keys < (user + 1) * self.num_items)]
            allowed = torch.ones(self.num_items, dtype=torch.bool)
            allowed[positives - user * self.num_items] = False
            choices = allowed.nonzero().squeeze(1)
            if choices.numel():
                draw = torch.randint(choices.numel(), (int(rows.sum()),), generator=self.generator)
                items[rows] = choices[draw]
        return items


def bpr_loss(model: LightGCN, users_e: Tensor, items_e: Tensor, users: Tensor, pos: Tensor, neg: Tensor, l2: float) -> Tensor:
    user_vectors = users_e[users].unsqueeze(1)  # [B, 1, d]
    pos_rank = (user_vectors.squeeze(1) * items_e[pos]).sum(-1, keepdim=True).expand(-1, neg.size(1))
    neg_rank = (user_vectors * items_e[neg]).sum(-1)
    nodes = torch.cat([users, pos + model.num_users, neg.flatten() + model.num_users])
    return model.gcn.recommendation_loss(pos_rank.flatten(), neg_rank.flatten(), nodes, lambda_reg=l2)


def softmax_loss(
    model: LightGCN, users_e: Tensor, items_e: Tensor, users: Tensor, pos: Tensor, neg: Tensor, l2: float, tau: float,
    cosine: bool = True,
) -> Tensor:
    unit = (lambda x: F.normalize(x, dim=-1)) if cosine else (lambda x: x)  # noqa: E731
    u = unit(users_e[users])
    positive = (u * unit(items_e[pos])).sum(-1, keepdim=True)
    negative = u @ unit(items_e[neg]).T  # [B, M], shared negatives
    negative = negative.masked_fill(neg.unsqueeze(0) == pos.unsqueeze(1), float("-inf"))
    logits = torch.cat([positive, negative], dim=1) / tau
    loss = F.cross_entropy(logits, torch.zeros(len(users), dtype=torch.long, device=logits.device))
    ego = model.ego.weight[torch.cat([users, pos + model.num_users])]
    return loss + l2 * ego.pow(2).sum() / len(users)


def train_lightgcn(
    adjacency: Tensor,
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    config: LightGCNConfig = LightGCNConfig(),
    evaluate: Callable[[UserItemEmbeddings], dict[str, float]] | None = None,
    monitor: str = "ndcg@20",
) -> TrainingResult:
    """Train on the positive edges `edge_index` ([2, E], user index, item index) over `adjacency`
    (the (U + I) x (U + I) normalised sparse CSR of the same edges). Without `evaluate` it trains
    `max_epochs` (or until the time budget is spent) and returns the last state."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = torch.device(config.device)
    epochs = config.max_epochs
    model = LightGCN(num_users, num_items, config.embedding_dim, config.num_layers).to(device)
    adjacency = adjacency.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = NegativeSampler(edge_index, num_items, generator)
    num_edges = edge_index.size(1)
    steps_per_epoch = math.ceil(num_edges / config.batch_size)

    result = TrainingResult(model, model.embeddings(adjacency, config.unit_vectors), best_epoch=0)
    best_metric, best_state, stale = -math.inf, None, 0
    progress = tqdm(range(1, epochs + 1), desc="lightgcn", unit="epoch", mininterval=2.0)
    for epoch in progress:
        started = time.perf_counter()
        model.train()
        epoch_loss = 0.0
        for batch in torch.randperm(num_edges, generator=generator).split(config.batch_size):
            users, pos = edge_index[0, batch], edge_index[1, batch]
            if config.loss == "bpr":
                neg = sampler.sample(users, config.bpr_negatives)
            else:
                neg = torch.randint(num_items, (config.softmax_negatives,), generator=generator)
            users, pos, neg = users.to(device), pos.to(device), neg.to(device)
            users_e, items_e = model(adjacency)
            if config.loss == "bpr":
                loss = bpr_loss(model, users_e, items_e, users, pos, neg, config.l2)
            else:
                loss = softmax_loss(model, users_e, items_e, users, pos, neg, config.l2, config.temperature, config.cosine)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() / steps_per_epoch
        result.train_seconds += time.perf_counter() - started
        result.epochs_run = epoch
        # Progress is the epochs done, or the time budget spent, whichever is further along.
        time_spent = result.train_seconds / config.time_budget_s if config.time_budget_s else 0.0
        _schedule_lr(optimizer, config, max(epoch / epochs, time_spent))
        out_of_time = config.time_budget_s is not None and result.train_seconds >= config.time_budget_s
        progress.set_postfix(loss=f"{epoch_loss:.4f}", train_s=f"{result.train_seconds:.0f}")

        if evaluate is None or (epoch % config.eval_every and epoch != epochs and not out_of_time):
            if evaluate is None:
                result.history.append(Checkpoint(epoch, result.train_seconds, epoch_loss, {}))
            if out_of_time:
                result.stopped_because = "time budget spent"
                break
            continue
        model.eval()
        embeddings = model.embeddings(adjacency, config.unit_vectors)
        metrics = evaluate(embeddings)
        result.history.append(Checkpoint(epoch, result.train_seconds, epoch_loss, metrics))
        log.info("epoch %d  loss %.4f  %s  (%.0f s training)", epoch, epoch_loss, _fmt(metrics), result.train_seconds)
        if metrics[monitor] > best_metric:
            best_metric, stale = metrics[monitor], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            result.best_epoch, result.embeddings = epoch, embeddings
        else:
            stale += 1
        if config.patience is not None and stale >= config.patience:
            result.stopped_because = f"no {monitor} improvement in {stale} evaluations"
            break
        if out_of_time:
            result.stopped_because = "time budget spent"
            break
    progress.close()
    result.stopped_because = result.stopped_because or f"{result.epochs_run} epochs"
    if best_state is not None:
        model.load_state_dict(best_state)
    else:  # no evaluation: the last state is the result
        model.eval()
        result.best_epoch = result.epochs_run
        result.embeddings = model.embeddings(adjacency, config.unit_vectors)
    return result


def _schedule_lr(optimizer: torch.optim.Optimizer, config: LightGCNConfig, progress: float) -> None:
    """Cosine decay from lr to lr * lr_floor: big steps early, fine ones at the end."""
    progress = min(progress, 1.0)
    scale = config.lr_floor + (1 - config.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        group["lr"] = config.lr * scale


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(("recall@20", "ndcg@20")))
