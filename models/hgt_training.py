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
- BPR (Rendle et al. 2009): L = -mean log sigmoid(y_ui - y_uj) + l2 * ||H^(0)_batch||^2 / B.

What counts is the number of optimizer steps: the device and attribute embeddings only learn from the
batch's cold users, so a small catalogue needs small batches (the default 256) for the devices to get
their own tastes (tests/test_hgt.py checks that they do).

Model selection (`models/model_selection.py`): every `eval_every` epochs `evaluate(layer_outputs)` is
called (validation NDCG@20 in `recserve train hgt`); the best state is kept; training stops after
`patience` evaluations without improvement, `max_epochs`, or `time_budget_s`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.loader import LinkNeighborLoader
from torch_geometric.sampler import NegativeSampling

from graph_builders.heterogeneous import INTERACTS
from models.hgt import HGTRecommender, LayerOutputs
from models.model_selection import Checkpoint, train_with_selection
from models.neighbor_sampling import TorchNeighborSampler

REV_INTERACTS = ("item", "rev_interacts", "user")


class HGTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden_channels: int = Field(default=64, ge=2)
    num_layers: int = Field(default=2, ge=1)
    heads: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    num_neighbors: list[int] = Field(default_factory=lambda: [10, 5], description="in-edges sampled per node, per hop")
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
    loss = -F.logsigmoid((users * positives).sum(-1) - (users * negatives).sum(-1)).mean()
    ego = torch.cat([
        model.embeddings["user"](n_id["user"][src]),
        model.embeddings["item"](n_id["item"][torch.cat([pos, neg.flatten()])]),
    ])
    return loss + config.l2 * ego.pow(2).sum() / src.numel()


def link_loader(data: HeteroData, config: HGTConfig) -> LinkNeighborLoader:
    with warnings.catch_warnings():
        # PyG warns that sampling without pyg-lib is deprecated: this sampler is the replacement.
        warnings.filterwarnings("ignore", message=".*without a 'pyg-lib' installation.*")
        sampler = TorchNeighborSampler(data, num_neighbors=config.num_neighbors)
    return LinkNeighborLoader(
        data,
        num_neighbors=config.num_neighbors,
        edge_label_index=(INTERACTS, data[INTERACTS].edge_index),
        batch_size=config.batch_size,
        shuffle=True,
        neg_sampling=NegativeSampling("triplet", amount=1),
        neighbor_sampler=sampler,
    )


def train_hgt(
    data: HeteroData,
    config: HGTConfig = HGTConfig(),
    evaluate: Callable[[LayerOutputs], dict[str, float]] | None = None,
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

    peak_batch_nodes = 0

    def train_epoch(epoch: int, train_seconds: float) -> float:
        nonlocal peak_batch_nodes
        epoch_loss = 0.0
        for batch in loader:
            peak_batch_nodes = max(peak_batch_nodes, sum(batch[t].num_nodes for t in batch.node_types))
            loss = bpr_step(model, batch, config, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() / steps
        return epoch_loss

    selection = train_with_selection(model, config, train_epoch, lambda: model.layer_outputs(edge_index), evaluate, monitor, "hgt")
    return HGTTrainingResult(model, selection.snapshot, selection.best_epoch, selection.history, selection.epochs_run,
                             selection.train_seconds, peak_batch_nodes, selection.stopped_because)
