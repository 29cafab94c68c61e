"""The content retriever on its own deployment: MiniLM text vectors in the vector store.

- `recommend`: a known user's vector (the event-weighted mean of their items' text vectors), or the mean of
  the session's items, searched against the item vectors with the request's filters.
- `similar_items`: items whose text is nearest an item's.
- `search`: a free-text query ("space strategy with co-op"), encoded by the replica's MiniLM.

Every item of the catalogue has a vector as soon as `recserve train content` has embedded it, interactions or
not, so an item nobody has touched yet is found. The replica reads the vectors of the artifact version it
serves (`{alias}__{version}`), not whatever the alias points at now, so a rollout through `user_config` moves
every stage of a request to the new version together.

When the vector store cannot be reached, `status()` reports the replica unhealthy and calls raise
`VectorStoreUnavailable`; the ingress falls through to the next stage. `check_health` does not fail for it:
restarting the replica would not bring the store back.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from ray import serve

from deployments.contract import (
    ArtifactModel,
    Candidates,
    LookupResult,
    ModelQuery,
    ModelStatus,
    SimilarItemsQuery,
    TextSearchQuery,
)
from deployments.devices import replica_device
from models.content import TextEncoder
from stores.artifacts import ArtifactNotFound
from stores.settings import get_settings
from stores.vectors import VectorStore, VectorStoreUnavailable

log = logging.getLogger(__name__)

MAX_SESSION_ITEMS = 20  # the most recent session items averaged into a visitor's vector


MODEL = "content"


def _candidates(hits: list[tuple[str, float]], reason: str) -> Candidates:
    return Candidates.of(MODEL, [i for i, _ in hits], [s for _, s in hits], reason)


# What a replica "loads" is the artifact version whose vectors it searches: the vectors stay in the store.
@serve.deployment(user_config={"version": "current"})
class ContentDeployment(ArtifactModel[str]):
    model_name = MODEL

    def __init__(self, namespace: str, artifacts_dir: str):
        super().__init__(namespace, artifacts_dir)
        self.namespace = namespace
        self.store = VectorStore.from_settings(get_settings())
        # One thread owns the store, as the embedded engine's readers are not shared across threads. Its reads
        # are local and take well under a millisecond, so that thread is the event loop's own: a hop to a worker
        # cost more than the read on a busy machine. A server's HTTP calls go to a worker, off the event loop.
        self.store_thread = None if self.store.in_process else ThreadPoolExecutor(1, thread_name_prefix="vector-store")
        self.encoder = TextEncoder(device=replica_device())
        self.encoder.encode(["warm up"])  # loads the model now, not on the first request

    def load_artifact(self, folder: Path) -> str:
        version = folder.name
        try:
            stored = self.store.count(self.namespace, self.model_name, "items", version=version)
        except VectorStoreUnavailable as error:
            # Serve the version anyway: status() reports the outage, and the calls work once the store is back.
            log.warning("content: vector store unavailable while loading %s: %s", version, error)
            return version
        if stored == 0:
            raise ArtifactNotFound(f"content {version} has no vectors in the store; run `recserve sync content {version}`")
        return version

    async def _store(self, call, *args, **kwargs):
        if self.store_thread is None:
            return call(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.store_thread, lambda: call(*args, **kwargs))

    async def status(self) -> ModelStatus:
        status = await super().status()
        try:
            await self._store(self.store.check)
        except VectorStoreUnavailable as error:
            return status.model_copy(update={"healthy": False, "error": f"vector store unavailable: {error}"})
        return status

    async def _vectors(self, kind: str, ids: list[str], version: str) -> list[np.ndarray]:
        """The stored vectors of those ids that have one, in one store call."""
        found = await self._store(self.store.get_vectors, self.namespace, self.model_name, kind, ids, version=version)
        return [vector for vector in found if vector is not None]

    async def _search(self, vector: np.ndarray, query, version: str, exclude: list[str], badges=()) -> list[tuple[str, float]]:
        return await self._store(
            self.store.search,
            self.namespace,
            self.model_name,
            "items",
            vector,
            query.k,
            exclude_ids=exclude,
            category=query.filters.category,
            provider=query.filters.provider,
            badges=badges,
            version=version,
        )

    async def recommend(self, query: ModelQuery) -> Candidates:
        await self.fault_delay()
        version = self.loaded
        if version is None:
            return Candidates(source=MODEL)
        vector, reason = None, ""
        if query.user_id is not None:
            found = await self._vectors("users", [query.user_id], version)
            # A zero vector: the user liked nothing (only dislikes), so there is no content signal.
            if found and found[0].any():
                vector, reason = found[0], "like what you played"
        if vector is None and query.session_items:
            found = await self._vectors("items", query.session_items[-MAX_SESSION_ITEMS:], version)
            if found:
                vector, reason = np.mean(found, axis=0), "like the items in your session"
        if vector is None:
            return Candidates(source=MODEL)  # nothing known of them: the cascade's next stage answers
        hits = await self._search(vector, query, version, [*query.exclude_ids, *query.session_items])
        return _candidates(hits, reason)

    async def similar_items(self, query: SimilarItemsQuery) -> LookupResult:
        version = self.loaded
        if version is None:
            return LookupResult()
        found = await self._vectors("items", [query.item_id], version)
        if not found:
            return LookupResult(missing=f"unknown item {query.item_id!r}", version=version)
        hits = await self._search(found[0], query, version, [*query.exclude_ids, query.item_id])
        return LookupResult(candidates=_candidates(hits, "similar description"), version=version)

    async def search(self, query: TextSearchQuery) -> LookupResult:
        version = self.loaded
        if version is None:
            return LookupResult()
        [vector] = await asyncio.to_thread(self.encoder.encode, [query.text])
        hits = await self._search(vector, query, version, query.exclude_ids, badges=query.badges)
        return LookupResult(candidates=_candidates(hits, f"matches {query.text!r}"), version=version)
