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
  same user among them is left in, as in sampled-softmax practice (probability ~ degree / items).

On Gowalla (benchmarks/lightgcn_gowalla.py, BENCHMARKS.md) BPR with a large learning rate (3e-2, batch
16384), N(0, 0.1^2) ego embeddings and user-uniform positives (`sampling="users"`) beats sampled softmax in
both Recall@20 and NDCG@20 over an hour. The defaults were not re-tuned on the other datasets; the Gowalla
settings are that benchmark's `--set` flags.

Model selection (`models/model_selection.py`): every `eval_every` epochs the callback
`evaluate(embeddings)` is called (validation NDCG@20 in `recserve train`); the best state is kept and
training stops after `patience` evaluations without improvement, after `max_epochs`, or when
`time_budget_s` is spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from models.embeddings import UserItemEmbeddings
from models.lightgcn import LightGCN
from models.model_selection import Checkpoint, train_with_selection


class LightGCNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedding_dim: int = Field(default=64, ge=1)
    num_layers: int = Field(default=3, ge=0)
    init_std: float | None = Field(default=0.1, gt=0, description="E^(0) ~ N(0, init_std^2); None: PyG's Xavier")
    edge_values: Literal["binary", "weight"] = Field(
        default="weight", description="adjacency values: 1 per edge, or the decayed event weight W(u, i)"
    )
    loss: Literal["bpr", "softmax"] = "softmax"
    sampling: Literal["edges", "users"] = Field(
        default="edges",
        description="positives per epoch: each edge once, or as many (user, positive) draws with the user uniform "
        "and then one of their items (the official LightGCN code's sampler)",
    )
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
    model = LightGCN(num_users, num_items, config.embedding_dim, config.num_layers, init_std=config.init_std).to(device)
    adjacency = adjacency.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = NegativeSampler(edge_index, num_items, generator)
    num_edges = edge_index.size(1)
    steps_per_epoch = math.ceil(num_edges / config.batch_size)
    draw_positives = positive_sampler(edge_index, num_users, config.batch_size, config.sampling, generator)

    def train_epoch(epoch: int, train_seconds: float) -> float:
        # Progress is the epochs done, or the time budget spent, whichever is further along.
        time_spent = train_seconds / config.time_budget_s if config.time_budget_s else 0.0
        _schedule_lr(optimizer, config, max((epoch - 1) / config.max_epochs, time_spent))
        epoch_loss = 0.0
        for users, pos in draw_positives():
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
        return epoch_loss

    selection = train_with_selection(
        model, config, train_epoch, lambda: model.embeddings(adjacency, config.unit_vectors), evaluate, monitor, "lightgcn"
    )
    return TrainingResult(model, selection.snapshot, selection.best_epoch, selection.history, selection.epochs_run,
                          selection.train_seconds, selection.stopped_because)


def positive_sampler(
    edge_index: Tensor, num_users: int, batch_size: int, sampling: str, generator: torch.Generator
) -> Callable[[], Iterator[tuple[Tensor, Tensor]]]:
    """A function that yields one epoch of (users, positive items) batches, E positives in all.

    "edges": every edge once, in random order, so a user is drawn in proportion to their degree.
    "users": a uniform user with at least one edge, then a uniform item of theirs, E times. Every user
    weighs the same in per-user metrics (Recall@20 is a mean over users), and so they do here.
    """
    num_edges = edge_index.size(1)
    if sampling == "edges":
        def epoch() -> Iterator[tuple[Tensor, Tensor]]:
            for batch in torch.randperm(num_edges, generator=generator).split(batch_size):
                yield edge_index[0, batch], edge_index[1, batch]
        return epoch

    order = torch.argsort(edge_index[0], stable=True)
    items_by_user = edge_index[1, order]
    degree = torch.bincount(edge_index[0], minlength=num_users)
    start = torch.cumsum(degree, 0) - degree
    active = degree.nonzero().squeeze(1)

    def epoch() -> Iterator[tuple[Tensor, Tensor]]:
        for first in range(0, num_edges, batch_size):
            size = min(batch_size, num_edges - first)
            users = active[torch.randint(len(active), (size,), generator=generator)]
            offset = (torch.rand(size, generator=generator) * degree[users]).long()
            yield users, items_by_user[start[users] + offset.clamp_max_(degree[users] - 1)]
    return epoch


def _schedule_lr(optimizer: torch.optim.Optimizer, config: LightGCNConfig, progress: float) -> None:
    """Cosine decay from lr to lr * lr_floor: big steps early, fine ones at the end."""
    progress = min(progress, 1.0)
    scale = config.lr_floor + (1 - config.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress))
    for group in optimizer.param_groups:
        group["lr"] = config.lr * scale
