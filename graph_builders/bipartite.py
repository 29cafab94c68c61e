"""The user-item bipartite graph LightGCN trains on, plus the "seen" mask every model serves with.

From the aggregated totals W(u, i) of `edge_weights.aggregate_interactions`:

    positive edges   W(u, i) > 0   -> edge_index / edge_weight (training edges, propagated)
    negative pairs   W(u, i) < 0   -> negative_edge_index (explicit dislikes: hard-negative candidates only)
    seen             W(u, i) != 0 or any event at all -> `seen` mask (never recommended back)

Normalised adjacency (LightGCN, He et al. 2020, eq. 7), users first then items, N = U + I:

    A = [[0, R], [R^T, 0]]            R[u, i] = 1 (binary) or W(u, i) (weight), positive edges only
    A_hat = D^-1/2 A D^-1/2           D = diag(row sums of A); rows with degree 0 stay 0
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd
import torch

from graph_builders.edge_weights import EdgeWeights, aggregate_interactions


def csr_from_indices(
    rows: np.ndarray | torch.Tensor,
    cols: np.ndarray | torch.Tensor,
    shape: tuple[int, int],
    values: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """A torch sparse CSR (float32) from coordinate lists; duplicate coordinates are summed.

    values default to 1. Column indices come out sorted within each row.
    """
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    cols_t = torch.as_tensor(cols, dtype=torch.long)
    vals_t = torch.ones(rows_t.numel()) if values is None else torch.as_tensor(values, dtype=torch.float32)
    for name, index, bound in (("row", rows_t, shape[0]), ("column", cols_t, shape[1])):
        # Invariant checks are off below (they cost more than the build); an out-of-range index would crash.
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= bound):
            raise ValueError(f"{name} index out of range [0, {bound})")
    coo = torch.sparse_coo_tensor(torch.stack([rows_t, cols_t]), vals_t, size=shape, check_invariants=False)
    return coo.coalesce().to_sparse_csr()


def item_id_order(items: pd.DataFrame | None, events: pd.DataFrame) -> list[str]:
    """Catalogue items in catalogue order (first occurrence), then items seen only in events, sorted.

    Keeping the catalogue's order lets a reader fix the indices (e.g. Gowalla's remapped ids); items never
    interacted with still get an index so content/cold-start models can score them.
    """
    catalogue = [] if items is None else list(dict.fromkeys(items["item_id"].dropna()))
    extra = sorted(set(pd.unique(events["item_id"].dropna())) - set(catalogue))
    return catalogue + extra


def index_of(ids: list[str]) -> dict[str, int]:
    return {key: i for i, key in enumerate(ids)}


def pairs_csr(
    pairs: pd.DataFrame, user_index: dict[str, int], item_index: dict[str, int], user_column: str = "user_key"
) -> torch.Tensor:
    """users x items CSR of ones for a (user key, item_id) frame; pairs outside the maps are dropped."""
    rows = pairs[user_column].astype(object).map(user_index)
    cols = pairs["item_id"].astype(object).map(item_index)
    known = (rows.notna() & cols.notna()).to_numpy()
    rows_known, cols_known = rows.to_numpy()[known].astype(np.int64), cols.to_numpy()[known].astype(np.int64)
    return csr_from_indices(rows_known, cols_known, (len(user_index), len(item_index)))


@dataclass
class BipartiteGraph:
    user_ids: list[str]
    item_ids: list[str]
    user_index: dict[str, int]
    item_index: dict[str, int]
    edge_index: torch.Tensor  # [2, E] long: row 0 user index, row 1 item index; positive totals only
    edge_weight: torch.Tensor  # [E] float32: W(u, i) > 0, or 1.0 when built with binary=True
    negative_edge_index: torch.Tensor  # [2, E-] long: pairs with W(u, i) < 0 (explicit dislikes)
    seen: torch.Tensor  # users x items sparse CSR float32, 1 for every pair with any event (dislikes included)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_events(
        cls,
        events: pd.DataFrame,
        items: pd.DataFrame | None = None,
        config: EdgeWeights = EdgeWeights(),
        now: datetime | pd.Timestamp | None = None,
        binary: bool = False,
    ) -> BipartiteGraph:
        """Users are the sorted interaction keys; items follow `item_id_order` (catalogue first)."""
        pairs = aggregate_interactions(events, config, now=now)
        user_ids = sorted(pd.unique(pairs["user_key"]).tolist())
        item_ids = item_id_order(items, events)
        rows = pd.Index(user_ids).get_indexer(pairs["user_key"].astype(object))
        cols = pd.Index(item_ids).get_indexer(pairs["item_id"].astype(object))
        weight = pairs["weight"].to_numpy()
        positive, negative = weight > 0, weight < 0

        edge_weight = np.ones(int(positive.sum())) if binary else weight[positive]
        shape = (len(user_ids), len(item_ids))
        return cls(
            user_ids=user_ids,
            item_ids=item_ids,
            user_index=index_of(user_ids),
            item_index=index_of(item_ids),
            edge_index=torch.from_numpy(np.stack([rows[positive], cols[positive]]).astype(np.int64)),
            edge_weight=torch.from_numpy(edge_weight).float(),
            negative_edge_index=torch.from_numpy(np.stack([rows[negative], cols[negative]]).astype(np.int64)),
            seen=csr_from_indices(rows, cols, shape),
        )

    def normalized_adjacency(self, edge_values: Literal["binary", "weight"] = "binary") -> torch.Tensor:
        """D^-1/2 A D^-1/2 over (U + I) x (U + I) nodes as a float32 sparse CSR (see module docstring)."""
        if edge_values not in ("binary", "weight"):
            raise ValueError(f"edge_values must be 'binary' or 'weight', not {edge_values!r}")
        users, items = self.edge_index.numpy()
        values = np.ones(len(users)) if edge_values == "binary" else self.edge_weight.double().numpy()
        num_nodes = self.num_users + self.num_items
        rows = np.concatenate([users, items + self.num_users])
        cols = np.concatenate([items + self.num_users, users])
        vals = np.concatenate([values, values])
        degree = np.bincount(rows, weights=vals, minlength=num_nodes)
        inv_sqrt = np.zeros(num_nodes)
        np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
        return csr_from_indices(rows, cols, (num_nodes, num_nodes), inv_sqrt[rows] * vals * inv_sqrt[cols])

    def user_item_csr(self) -> torch.Tensor:
        """users x items sparse CSR of the positive edges, values = edge_weight."""
        users, items = self.edge_index
        return csr_from_indices(users, items, (self.num_users, self.num_items), self.edge_weight)

    def positives_per_user(self) -> torch.Tensor:
        """[U] long: number of positive edges of each user (BPR samples users with at least one)."""
        return torch.bincount(self.edge_index[0], minlength=self.num_users)

    def item_degrees(self) -> torch.Tensor:
        """[I] long: number of users with a positive edge to each item."""
        return torch.bincount(self.edge_index[1], minlength=self.num_items)
