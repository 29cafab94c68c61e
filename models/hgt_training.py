"""Training the HGT recommender: mini-batches of user-item links with sampled neighbourhoods, BPR loss.

Each step takes `batch_size` positive (user, item) edges. PyG's `LinkNeighborLoader` draws one random
negative item per positive ("triplet" negative sampling) and samples `num_neighbors` in-edges per node
and hop around all of them (`models/neighbor_sampling.py`), so memory is bounded by the batch, not by
the graph. Then:

- the batch's own positive edges are removed from its message-passing subgraph, in both directions, so
  that no link is predicted from itself;
- cold-start simulation: a share `cold_user_rate` of the batch's users get the "unseen" token instead of
  their ID embedding and keep at most 0..`cold_user_max_items` of their interactions (drawn per user);
  a share `cold_item_rate` of its items get the token and lose all their interactions. The layers thus
  learn to place a node from its device, attributes, provider and badges (`models/hgt.py`);
- BPR (Rendle et al. 2009): L = -mean log sigmoid(y_ui - y_uj) + l2 * ||H^(0)_batch||^2 / B, or
  (`loss="softmax"`) each positive against the batch's other positives and the random negatives.

Small batches matter more than epochs: on the generated demo data, batches of 1024 edges for 4 epochs
(32 steps) left every cold user with the same popular items whatever their device; batches of 256 for
20 epochs gave each device its own genres (console: shooters and racing, web: RPGs and strategy).
BPR kept improving there longer than the softmax did (validation NDCG@20 0.35 against 0.28).

Model selection: every `eval_every` epochs `evaluate(model, layer_outputs)` is called (validation
NDCG@20 in `recserve train hgt`); the best state is kept; training stops after `patience` evaluations
without improvement, `max_epochs`, or `time_budget_s`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.loader import LinkNeighborLoader
from torch_geometric.sampler import NegativeSampling
from tqdm.auto import tqdm

from graph_builders.heterogeneous import INTERACTS
from models.hgt import HGTRecommender, LayerOutputs
from models.neighbor_sampling import TorchNeighborSampler

log = logging.getLogger(__name__)

REV_INTERACTS = ("item", "rev_interacts", "user")


class HGTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden_channels: int = Field(default=64, ge=2)
    num_layers: int = Field(default=2, ge=1)
    heads: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    num_neighbors: list[int] = Field(default_factory=lambda: [10, 5], description="in-edges sampled per node, per hop")
    loss: Literal["bpr", "softmax"] = Field(default="bpr", description="BPR, or in-batch sampled softmax")
    temperature: float = Field(default=1.0, gt=0, description="softmax only")
    batch_size: int = Field(default=256, ge=1, description="positive edges per step")
    lr: float = Field(default=3e-3, gt=0)
    l2: float = Field(default=1e-5, ge=0)
    cold_user_rate: float = Field(default=0.2, ge=0, le=1, description="share of a batch's users trained as cold")
    cold_user_max_items: int = Field(default=3, ge=0, description="interactions a simulated cold user keeps, at most")
    cold_item_rate: float = Field(default=0.1, ge=0, le=1, description="share of a batch's items trained as new")
    max_epochs: int = Field(default=50, ge=1)
    eval_every: int = Field(default=1, ge=1)
    patience: int | None = Field(default=5, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    seed: int = 0
    device: str = "cpu"


@dataclass
class Checkpoint:
    epoch: int
    train_seconds: float
    loss: float
    metrics: dict[str, float]


@dataclass
class HGTTrainingResult:
    model: HGTRecommender
    layers: LayerOutputs  # of the best state
    best_epoch: int
    history: list[Checkpoint] = field(default_factory=list)
    epochs_run: int = 0
    train_seconds: float = 0.0
    peak_batch_nodes: int = 0
    stopped_because: str = ""


def build_model(data: HeteroData, config: HGTConfig) -> HGTRecommender:
    num_nodes = {t: data[t].num_nodes for t in data.node_types}
    return HGTRecommender(num_nodes, data.metadata(), config.hidden_channels, config.num_layers, config.heads, config.dropout)


def _pair_keys(users: Tensor, items: Tensor, num_items: int) -> Tensor:
    return users * num_items + items


def drop_supervised_edges(batch: HeteroData, users: Tensor, items: Tensor, num_items: int) -> None:
    """Removes the (global) user-item pairs being predicted from the batch's subgraph, both ways."""
    targets = _pair_keys(users, items, num_items)
    user_ids, item_ids = batch["user"].n_id, batch["item"].n_id
    for edge_type, (u_row, i_row) in ((INTERACTS, (0, 1)), (REV_INTERACTS, (1, 0))):
        if edge_type not in batch.edge_types:
            continue
        edge_index = batch[edge_type].edge_index
        keys = _pair_keys(user_ids[edge_index[u_row]], item_ids[edge_index[i_row]], num_items)
        batch[edge_type].edge_index = edge_index[:, ~torch.isin(keys, targets)]


def _rank_within(groups: Tensor) -> Tensor:
    """Random rank of each element among the elements of its group."""
    order = torch.randperm(groups.numel())
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    starts = torch.ones_like(sorted_groups, dtype=torch.bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    start_pos = torch.cummax(torch.where(starts, torch.arange(groups.numel()), 0), 0).values
    ranks = torch.empty_like(groups)
    ranks[order] = torch.arange(groups.numel()) - start_pos
    return ranks


def simulate_cold_start(batch: HeteroData, user_seeds: Tensor, item_seeds: Tensor, config: HGTConfig) -> dict[str, Tensor]:
    """Turns a random share of the seed users and items into cold nodes (see the module docstring);
    returns the per-node "unseen" flags for the model's input."""
    num_users, num_items = batch["user"].num_nodes, batch["item"].num_nodes
    cold_users = torch.zeros(num_users, dtype=torch.bool)
    seeds = user_seeds.unique()
    cold_users[seeds[torch.rand(seeds.numel()) < config.cold_user_rate]] = True
    cold_items = torch.zeros(num_items, dtype=torch.bool)
    seeds = item_seeds.unique()
    cold_items[seeds[torch.rand(seeds.numel()) < config.cold_item_rate]] = True
    keep_items = torch.randint(0, config.cold_user_max_items + 1, (num_users,))

    if INTERACTS in batch.edge_types:
        users, items = batch[INTERACTS].edge_index
        batch[INTERACTS].edge_index = batch[INTERACTS].edge_index[:, ~cold_users[users] & ~cold_items[items]]
    if REV_INTERACTS in batch.edge_types:
        items, users = batch[REV_INTERACTS].edge_index
        kept = _rank_within(users) < keep_items[users]
        keep = ~cold_items[items] & (~cold_users[users] | kept)
        batch[REV_INTERACTS].edge_index = batch[REV_INTERACTS].edge_index[:, keep]
    return {"user": cold_users, "item": cold_items}


def bpr_step(model: HGTRecommender, batch: HeteroData, config: HGTConfig, device: torch.device) -> Tensor:
    src = batch["user"].src_index
    pos = batch["item"].dst_pos_index
    neg = batch["item"].dst_neg_index
    num_items = model.num_nodes["item"]
    drop_supervised_edges(batch, batch["user"].n_id[src], batch["item"].n_id[pos], num_items)
    unseen = simulate_cold_start(batch, src, torch.cat([pos, neg.flatten()]), config)
    n_id = {t: batch[t].n_id.to(device) for t in batch.node_types}
    edge_index = {e: batch[e].edge_index.to(device) for e in batch.edge_types}
    unseen = {t: flags.to(device) for t, flags in unseen.items()}
    out = model(n_id, edge_index, unseen)
    src, pos, neg = src.to(device), pos.to(device), neg.to(device)
    users, positives, negatives = out["user"][src], out["item"][pos], out["item"][neg]
    if config.loss == "bpr":
        loss = -F.logsigmoid((users * positives).sum(-1) - (users * negatives).sum(-1)).mean()
    else:
        loss = in_batch_softmax(users, positives, negatives, pos, config.temperature)
    ego = torch.cat([
        model.embeddings["user"](n_id["user"][src]),
        model.embeddings["item"](n_id["item"][torch.cat([pos, neg.flatten()])]),
    ])
    return loss + config.l2 * ego.pow(2).sum() / src.numel()


def in_batch_softmax(users: Tensor, positives: Tensor, negatives: Tensor, pos: Tensor, temperature: float) -> Tensor:
    """Each user's positive against every other positive of the batch and the random negatives. The other
    positives are drawn in proportion to popularity, so popularity alone cannot solve the task."""
    candidates = torch.cat([positives, negatives])
    logits = users @ candidates.T / temperature  # [B, 2B]
    same_item = pos.unsqueeze(1) == pos.unsqueeze(0)
    same_item.fill_diagonal_(False)
    logits[:, : pos.numel()] = logits[:, : pos.numel()].masked_fill(same_item, float("-inf"))
    return F.cross_entropy(logits, torch.arange(pos.numel(), device=logits.device))


def link_loader(data: HeteroData, config: HGTConfig, shuffle: bool = True) -> LinkNeighborLoader:
    with warnings.catch_warnings():
        # PyG warns that sampling without pyg-lib is deprecated: this sampler is the replacement.
        warnings.filterwarnings("ignore", message=".*without a 'pyg-lib' installation.*")
        sampler = TorchNeighborSampler(data, num_neighbors=config.num_neighbors)
    return LinkNeighborLoader(
        data,
        num_neighbors=config.num_neighbors,
        edge_label_index=(INTERACTS, data[INTERACTS].edge_index),
        batch_size=config.batch_size,
        shuffle=shuffle,
        neg_sampling=NegativeSampling("triplet", amount=1),
        neighbor_sampler=sampler,
    )


def train_hgt(
    data: HeteroData,
    config: HGTConfig = HGTConfig(),
    evaluate: Callable[[HGTRecommender, LayerOutputs], dict[str, float]] | None = None,
    monitor: str = "ndcg@20",
) -> HGTTrainingResult:
    """Train on every positive (user, interacts, item) edge of `data` (a `build_hetero_graph` graph).
    Without `evaluate` it trains `max_epochs` (or until the time budget is spent), keeping the last state."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = build_model(data, config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loader = link_loader(data, config)
    edge_index = {e: data[e].edge_index for e in data.edge_types}
    steps = max(len(loader), 1)

    result = HGTTrainingResult(model, [], best_epoch=0)
    best_metric, best_state, stale = -math.inf, None, 0
    progress = tqdm(range(1, config.max_epochs + 1), desc="hgt", unit="epoch", mininterval=2.0)
    for epoch in progress:
        started = time.perf_counter()
        model.train()
        epoch_loss = 0.0
        for batch in loader:
            result.peak_batch_nodes = max(result.peak_batch_nodes, sum(batch[t].num_nodes for t in batch.node_types))
            loss = bpr_step(model, batch, config, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() / steps
        result.train_seconds += time.perf_counter() - started
        result.epochs_run = epoch
        out_of_time = config.time_budget_s is not None and result.train_seconds >= config.time_budget_s
        progress.set_postfix(loss=f"{epoch_loss:.4f}", train_s=f"{result.train_seconds:.0f}")

        if evaluate is None or (epoch % config.eval_every and epoch != config.max_epochs and not out_of_time):
            if evaluate is None:
                result.history.append(Checkpoint(epoch, result.train_seconds, epoch_loss, {}))
            if out_of_time:
                result.stopped_because = "time budget spent"
                break
            continue
        model.eval()
        layers = model.layer_outputs(edge_index)
        metrics = evaluate(model, layers)
        result.history.append(Checkpoint(epoch, result.train_seconds, epoch_loss, metrics))
        log.info("hgt epoch %d  loss %.4f  %s  (%.0f s training)", epoch, epoch_loss,
                 "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("recall@20", "ndcg@20")), result.train_seconds)
        if metrics[monitor] > best_metric:
            best_metric, stale = metrics[monitor], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            result.best_epoch, result.layers = epoch, layers
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
    model.eval()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.best_epoch = result.epochs_run
        result.layers = model.layer_outputs(edge_index)
    return result
