"""The item id map and catalogue facets every model artifact carries, so serving needs no database."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from stores.artifacts import read_json, write_json


MASK_CACHE_SIZE = 256


@dataclass
class ItemIndex:
    item_ids: list[str]
    categories: list[str | None]
    providers: list[str | None]
    index: dict[str, int] = field(init=False, repr=False)
    _masks: dict[tuple[str | None, str | None], torch.Tensor] = field(init=False, repr=False, default_factory=dict)

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
        """Bool mask of the items in that category and/or provider; None when there is no filter.

        Masks are built once per filter and kept (up to `MASK_CACHE_SIZE`): serving asks for the same
        few categories over and over, and building one walks the whole catalogue.
        """
        if category is None and provider is None:
            return None
        key = (category, provider)
        if key not in self._masks:
            if len(self._masks) >= MASK_CACHE_SIZE:
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = self._build_mask(category, provider)
        return self._masks[key]

    def _build_mask(self, category: str | None, provider: str | None) -> torch.Tensor:
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
