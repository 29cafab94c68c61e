"""LightGCN on its own deployment: concurrent requests share one top-k matrix product (`@serve.batch`).

A known user is scored with their propagated embedding. An unknown user who sent session items is
scored with the mean of those items' embeddings, so a brand-new visitor still gets collaborative
recommendations. Anyone else gets an empty list, and the cascade moves on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from ray import serve

from deployments.contract import ArtifactModel, Candidates, ModelQuery
from deployments.devices import replica_device
from models.embeddings import UserItemEmbeddings
from models.item_index import ItemIndex
from models.ranking import top_k_items
from stores.artifacts import read_json

MODEL = "lightgcn"


@dataclass
class LoadedLightGCN:
    embeddings: UserItemEmbeddings
    user_index: dict[str, int]
    items: ItemIndex

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> LoadedLightGCN:
        user_ids = read_json(folder / "users.json")["user_ids"]
        return cls(
            UserItemEmbeddings.load(folder, device=device),
            {user: i for i, user in enumerate(user_ids)},
            ItemIndex.load(folder),
        )

    def query_vector(self, query: ModelQuery) -> tuple[torch.Tensor, str] | None:
        """The vector to score the catalogue with, and why; None when the model knows nothing of them."""
        if query.user_id is not None and query.user_id in self.user_index:
            return self.embeddings.users[self.user_index[query.user_id]], "liked by users with your history"
        session = self.items.indices(query.session_items)
        if session:
            return self.embeddings.items[session].mean(dim=0), "liked with the items in your session"
        return None

    def rank(self, queries: list[ModelQuery]) -> list[Candidates]:
        """Candidates for each query: one [B, d] x [d, I] product and one masked top-k for the batch."""
        results = [Candidates(source=MODEL) for _ in queries]
        known = [(row, q, v) for row, q in enumerate(queries) if (v := self.query_vector(q)) is not None]
        if not known:
            return results
        scores = torch.stack([vector for _, _, (vector, _) in known]) @ self.embeddings.items.T
        masks = [self.items.mask(q.filters.category, q.filters.provider) for _, q, _ in known]
        allowed = None
        if any(m is not None for m in masks):
            everything = torch.ones(scores.size(1), dtype=torch.bool)
            allowed = torch.stack([everything if m is None else m for m in masks]).to(scores.device)
        exclude = [self.items.indices([*q.exclude_ids, *q.session_items]) for _, q, _ in known]
        values, indices = top_k_items(scores, max(q.k for _, q, _ in known), exclude, allowed)
        for batch_row, (row, query, (_, reason)) in enumerate(known):
            results[row] = Candidates.from_top_k(
                MODEL, self.items.item_ids, values[batch_row, : query.k].tolist(), indices[batch_row, : query.k].tolist(), reason
            )
        return results


@serve.deployment(user_config={"version": "current"})
class LightGCNDeployment(ArtifactModel[LoadedLightGCN]):
    model_name = MODEL

    def load_artifact(self, folder: Path) -> LoadedLightGCN:
        return LoadedLightGCN.load(folder, device=replica_device())

    async def recommend(self, query: ModelQuery) -> Candidates:
        await self.fault_delay()
        loaded = self.loaded  # one version for the whole request, even if a hot swap lands meanwhile
        if loaded is None:
            return Candidates(source=MODEL)
        return await self._recommend_batch(loaded, query)

    # No wait for a batch to fill: a lone request is answered at once, and under load the requests that
    # queue while a batch is being scored form the next one anyway.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _recommend_batch(self, versions: list[LoadedLightGCN], queries: list[ModelQuery]) -> list[Candidates]:
        results = [Candidates(source=MODEL) for _ in queries]
        # Requests that straddle a hot swap carry different versions: rank each version's rows together.
        for loaded in {id(v): v for v in versions}.values():
            rows = [row for row, version in enumerate(versions) if version is loaded]
            for row, candidates in zip(rows, loaded.rank([queries[r] for r in rows])):
                results[row] = candidates
        return results
