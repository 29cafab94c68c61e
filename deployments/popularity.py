"""Popularity on its own deployment: overall, per device, and within a category or provider."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray import serve

from deployments.contract import ArtifactModel, Candidate, ModelQuery
from models.item_index import ItemIndex
from models.popularity import PopularityModel
from models.ranking import top_k_items


@dataclass
class LoadedPopularity:
    model: PopularityModel
    items: ItemIndex


@serve.deployment(user_config={"version": "current"})
class PopularityDeployment(ArtifactModel[LoadedPopularity]):
    model_name = "popularity"

    def load_artifact(self, folder: Path) -> LoadedPopularity:
        return LoadedPopularity(PopularityModel.load(folder), ItemIndex.load(folder))

    async def recommend(self, query: ModelQuery) -> list[Candidate]:
        loaded = self.loaded
        if loaded is None:
            return []
        scores = loaded.model.scores(query.device)
        per_device = query.device is not None and query.device in loaded.model.by_device
        allowed = loaded.items.mask(query.filters.category, query.filters.provider)
        exclude = [loaded.items.indices(query.exclude_ids)]
        values, indices = top_k_items(scores, query.k, exclude, allowed)
        scope = f"on {query.device}" if per_device else "overall"
        if query.filters.category:
            scope += f" in {query.filters.category}"
        return [
            Candidate(item_id=loaded.items.item_ids[i], score=float(v), source=self.model_name, reason=f"popular {scope}")
            for v, i in zip(values.tolist(), indices.tolist())
            if v != float("-inf") and v > 0
        ]
