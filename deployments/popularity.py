"""Popularity on its own deployment: overall, per device, and within a category or provider.

It is also the fallback of /v1/provider_items while HGT is not loaded: `provider_items` lists a
provider's items by popularity (on the request's device when it has that device's counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ray import serve

from deployments.contract import ArtifactModel, Candidates, LookupResult, ModelQuery, ProviderItemsQuery
from models.item_index import ItemIndex
from models.popularity import PopularityModel
from models.ranking import top_k_items

MODEL = "popularity"


@dataclass
class LoadedPopularity:
    model: PopularityModel
    items: ItemIndex
    providers: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.providers = frozenset(p for p in self.items.providers if p is not None)

    def rank(
        self,
        device: str | None,
        k: int,
        exclude_ids: list[str],
        category: str | None,
        provider: str | None,
        unseen_too: bool = False,
    ) -> Candidates:
        """The top k by popularity (on `device` when known). Items nobody interacted with (score 0) are
        left out unless `unseen_too`: a "popular" list should not end in arbitrary ones."""
        scores = self.model.scores(device)
        per_device = device is not None and device in self.model.by_device
        allowed = self.items.mask(category, provider)
        values, indices = top_k_items(scores, k, [self.items.indices(exclude_ids)], allowed)
        scope = f"on {device}" if per_device else "overall"
        if category:
            scope += f" in {category}"
        return Candidates.from_top_k(
            MODEL, self.items.item_ids, values.tolist(), indices.tolist(), f"popular {scope}", -math.inf if unseen_too else 0.0
        )


@serve.deployment(user_config={"version": "current"})
class PopularityDeployment(ArtifactModel[LoadedPopularity]):
    model_name = MODEL

    def load_artifact(self, folder: Path) -> LoadedPopularity:
        return LoadedPopularity(PopularityModel.load(folder), ItemIndex.load(folder))

    async def recommend(self, query: ModelQuery) -> Candidates:
        await self.fault_delay()
        loaded = self.loaded
        if loaded is None:
            return Candidates(source=MODEL)
        return loaded.rank(query.device, query.k, query.exclude_ids, query.filters.category, query.filters.provider)

    async def provider_items(self, query: ProviderItemsQuery) -> LookupResult:
        """The provider's items by popularity; all of them, the unpopular last (it is their catalogue page)."""
        loaded, manifest = self.loaded, self.manifest
        if loaded is None or manifest is None:
            return LookupResult()
        if query.provider not in loaded.providers:
            return LookupResult(missing=f"unknown provider {query.provider!r}", version=manifest.version)
        candidates = loaded.rank(
            query.device, query.k, query.exclude_ids, query.filters.category, query.provider, unseen_too=True
        )
        return LookupResult(candidates=candidates, version=manifest.version)
