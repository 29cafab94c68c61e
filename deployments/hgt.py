"""HGT on its own deployment: cold-start recommendations, similar items and provider items.

The artifact (`recserve train hgt`) holds an embedding for every node of the heterogeneous graph
(users, items, providers, badges, categories, devices, user attributes). `models.hgt_serving.HGTIndex`
answers from them:
- `recommend`: a known user from their own vector; a new one from what the request says of them
  (device, attributes, session items), through meta-paths such as device -> users -> items;
- `similar_items`: items near an item (sharing its provider, badges, category or users);
- `provider_items`: a provider's items, for the user when anything is known of them, else by popularity.

Items added to the catalogue after training have no trained vector; at load, the replica reads the
catalogue from PostgreSQL and embeds them from their provider, badges and category, so a new game
is found from day one. PostgreSQL being down then is logged, not fatal: those items wait for the
next load. Unknown items and providers are answered as `LookupResult.missing`, not raised.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray import serve

from deployments.contract import (
    ArtifactModel,
    Candidates,
    LookupResult,
    ModelQuery,
    ProviderItemsQuery,
    SimilarItemsQuery,
)
from deployments.devices import replica_device
from models.hgt_serving import HGTIndex, ScoredItem, UnknownEntity, UserContext
from stores.event_store import EventStore
from stores.postgres import UNAVAILABLE_ERRORS, Database

log = logging.getLogger(__name__)


def _user(query: ModelQuery | ProviderItemsQuery) -> UserContext:
    return UserContext(
        user_id=query.user_id, session_items=query.session_items, device=query.device, attributes=query.attributes
    )


def _candidates(scored: list[ScoredItem], source: str) -> Candidates:
    return Candidates.of(source, [s.item_id for s in scored], [s.score for s in scored], [s.reason for s in scored])


@serve.deployment(user_config={"version": "current"})
class HGTDeployment(ArtifactModel[HGTIndex]):
    model_name = "hgt"

    def __init__(self, namespace: str, artifacts_dir: str):
        super().__init__(namespace, artifacts_dir)
        self.store = EventStore(Database.from_settings(namespace=namespace))

    def load_artifact(self, folder: Path) -> HGTIndex:
        index = HGTIndex.load(folder, device=replica_device())
        try:
            catalogue = self.store.items_frame()
        except UNAVAILABLE_ERRORS as error:
            log.warning("hgt: catalogue unavailable (%s); items added after training are not served yet", error)
            return index
        added = index.add_catalogue_items(catalogue)
        log.info("hgt: %s, plus %d catalogue items added after training", folder.name, added)
        return index

    # The torch work below runs on the replica's event loop: measured on this 2-core CPU, a known user
    # or a similar-items query is one product with the item vectors (~0.1 ms) and a new user adds one
    # small HGT pass over their links (~1.5 ms), less than a thread hop would be worth.
    async def recommend(self, query: ModelQuery) -> Candidates:
        await self.fault_delay()
        index = self.loaded  # one version for the whole request, even if a hot swap lands meanwhile
        if index is None:
            return Candidates(source=self.model_name)
        user = _user(query)
        scored = index.recommend(
            user, query.k, exclude_ids=query.exclude_ids, category=query.filters.category, provider=query.filters.provider
        )
        return _candidates(scored, self.model_name)

    async def similar_items(self, query: SimilarItemsQuery) -> LookupResult:
        index, manifest = self.loaded, self.manifest
        if index is None or manifest is None:
            return LookupResult()
        try:
            scored = index.similar_items(
                query.item_id,
                query.k,
                exclude_ids=query.exclude_ids,
                category=query.filters.category,
                provider=query.filters.provider,
            )
        except UnknownEntity as unknown:
            return LookupResult(missing=str(unknown), version=manifest.version)
        return LookupResult(candidates=_candidates(scored, self.model_name), version=manifest.version)

    async def provider_items(self, query: ProviderItemsQuery) -> LookupResult:
        index, manifest = self.loaded, self.manifest
        if index is None or manifest is None:
            return LookupResult()
        user = _user(query)
        try:
            scored = index.provider_items(
                query.provider, query.k, user=user, exclude_ids=query.exclude_ids, category=query.filters.category
            )
        except UnknownEntity as unknown:
            return LookupResult(missing=str(unknown), version=manifest.version)
        return LookupResult(candidates=_candidates(scored, self.model_name), version=manifest.version)
