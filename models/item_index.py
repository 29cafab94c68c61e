"""The item id map and catalogue facets every model artifact carries, so serving needs no database."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from stores.artifacts import read_json, write_json


@dataclass
class ItemIndex:
    item_ids: list[str]
    categories: list[str | None]
    providers: list[str | None]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {item: i for i, item in enumerate(self.item_ids)}

    @classmethod
    def from_items(cls, item_ids: list[str], items: pd.DataFrame) -> ItemIndex:
        """Facets for `item_ids` (a model's own item order) from the catalogue frame."""
        meta = items.drop_duplicates("item_id").set_index("item_id")[["category", "provider"]].reindex(item_ids)
        facet = lambda v: None if pd.isna(v) else str(v)  # noqa: E731
        return cls(list(item_ids), [facet(v) for v in meta["category"]], [facet(v) for v in meta["provider"]])

    def __len__(self) -> int:
        return len(self.item_ids)

    def indices(self, item_ids: Iterable[str]) -> list[int]:
        """Indices of the known ids; unknown ones are skipped."""
        return [self.index[i] for i in item_ids if i in self.index]

    def mask(self, category: str | None = None, provider: str | None = None) -> torch.Tensor | None:
        if category is None and provider is None:
            return None
        keep = torch.ones(len(self.item_ids), dtype=torch.bool)
        if category is not None:
            keep &= torch.tensor([c == category for c in self.categories])
        if provider is not None:
            keep &= torch.tensor([p == provider for p in self.providers])
        return keep

    def save(self, folder: Path) -> None:
        write_json(folder / "items.json", {"item_ids": self.item_ids, "categories": self.categories, "providers": self.providers})

    @classmethod
    def load(cls, folder: Path) -> ItemIndex:
        state = read_json(folder / "items.json")
        return cls(state["item_ids"], state["categories"], state["providers"])
