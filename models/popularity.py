"""Popularity: the floor every learned model must beat, and the cascade's last resort.

    pop(i)     = sum_u max(0, W(u, i))                            overall
    pop_d(i)   = (pop^d(i) + beta * pop(i) / sum_j pop(j)) / (sum_j pop^d(j) + beta)   per device d

W(u, i) is the time-decayed edge weight of graph_builders.edge_weights summed per (user, item);
a user's negative total (an explicit dislike) adds nothing. The per-device score is the device's
own popularity shrunk toward the overall distribution with `beta` pseudo-counts, so a rare
device still gets a sensible list. Per-category (and per-provider) lists are the same scores
under a mask, applied at query time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from graph_builders.edge_weights import EdgeWeights, aggregate_interactions


@dataclass
class PopularityModel:
    item_ids: list[str]
    overall: torch.Tensor  # [num_items], sums to 1 (0 for items never interacted with)
    by_device: dict[str, torch.Tensor]  # device -> [num_items], sums to 1

    @classmethod
    def fit(
        cls,
        events: pd.DataFrame,
        item_ids: list[str],
        weights: EdgeWeights | None = None,
        now: datetime | None = None,
        device_prior: float = 50.0,
    ) -> PopularityModel:
        weights = weights or EdgeWeights()
        index = {item: i for i, item in enumerate(item_ids)}
        overall = _item_mass(events, index, weights, now)
        overall_p = overall / max(overall.sum(), 1e-12)
        by_device = {}
        for device, device_events in events[events["device"].notna()].groupby("device"):
            mass = _item_mass(device_events, index, weights, now)
            by_device[str(device)] = (mass + device_prior * overall_p) / (mass.sum() + device_prior)
        return cls(
            item_ids=list(item_ids),
            overall=torch.from_numpy(overall_p).float(),
            by_device={d: torch.from_numpy(s).float() for d, s in by_device.items()},
        )

    def scores(self, device: str | None = None) -> torch.Tensor:
        return self.by_device.get(device, self.overall) if device else self.overall

    def save(self, folder: Path) -> None:
        torch.save(
            {"item_ids": self.item_ids, "overall": self.overall, "by_device": self.by_device}, folder / "popularity.pt"
        )

    @classmethod
    def load(cls, folder: Path) -> PopularityModel:
        state = torch.load(folder / "popularity.pt", weights_only=True)
        return cls(item_ids=state["item_ids"], overall=state["overall"], by_device=state["by_device"])


def _item_mass(events: pd.DataFrame, index: dict[str, int], weights: EdgeWeights, now: datetime | None) -> np.ndarray:
    pairs = aggregate_interactions(events, weights, now=now)
    positive = pairs[pairs["weight"] > 0]
    mass = np.zeros(len(index), dtype=np.float64)
    item_idx = positive["item_id"].map(index)
    known = item_idx.notna().to_numpy()
    np.add.at(mass, item_idx[known].astype(int).to_numpy(), positive["weight"].to_numpy()[known])
    return mass
