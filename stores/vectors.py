"""Embeddings in Qdrant: one collection per namespace, model and kind (`{namespace}__{model}__{kind}`).

That name is an alias. Each model version is written into a collection of its own, `{alias}__{version}`, and the
alias is switched to it in one `update_collection_aliases` call, so a reader sees the old version or the new one,
never a mix. qdrant-client 1.20's local mode implements aliases too (resolved on every read, saved in its
meta.json), so the same code path serves both modes.

Local mode (no `QDRANT_URL`) keeps its data under `state_dir/qdrant` and holds an exclusive file lock on it: only
one process may open that path at a time (a second gets RuntimeError), so close the store when done. It is also
brute force in Python; a Qdrant server is the production store.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse
from qdrant_client.local.qdrant_local import QdrantLocal
from tqdm import tqdm

from stores.settings import Settings

KINDS = ("users", "items")
# Fixed forever: point ids derive from it, so changing it orphans every stored vector.
POINT_ID_NAMESPACE = uuid.UUID("1db4e6b0-c839-59c9-83f4-ec0808f26820")
# Name parts may not contain "__", which separates them in collection names.
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(?:_[A-Za-z0-9.-]+)*$")
_DISTANCES = {"dot": models.Distance.DOT, "cosine": models.Distance.COSINE}


def point_id(item_or_user_id: str) -> str:
    """Qdrant takes only unsigned ints or UUIDs as point ids; ours are strings, so map them with uuid5."""
    return str(uuid.uuid5(POINT_ID_NAMESPACE, item_or_user_id))


def collection_name(namespace: str, model: str, kind: str) -> str:
    """The alias readers query; versions live in `{alias}__{version}` behind it."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    for part in (namespace, model):
        _check_part(part)
    return f"{namespace}__{model}__{kind}"


def _check_part(part: str) -> None:
    if not _NAME_PART.match(part):
        raise ValueError(f"{part!r} cannot be part of a collection name: use letters, digits, '.', '-', single '_'")


@dataclass(frozen=True)
class SyncSummary:
    collection: str
    version: str
    count: int
    seconds: float


class VectorStore:
    """User and item embeddings of the served model versions (and, later, content embeddings)."""

    def __init__(self, client: QdrantClient):
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorStore:
        """The server at QDRANT_URL when set, otherwise local mode under state_dir/qdrant (locks that folder)."""
        if settings.qdrant_url:
            return cls(QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key or None))
        return cls(QdrantClient(path=str(settings.state_dir / "qdrant")))

    def close(self) -> None:
        """Releases local mode's file lock, so another process can open the folder."""
        self.client.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writes --------------------------------------------------------------------------------
    def sync_embeddings(
        self,
        namespace: str,
        model: str,
        version: str,
        kind: str,
        ids: list[str],
        vectors: np.ndarray,
        payloads: list[dict[str, Any]] | None = None,
        distance: Literal["dot", "cosine"] = "dot",
        batch_size: int = 1024,
        progress: bool = True,
    ) -> SyncSummary:
        """Write every vector of one model version, then make it the current one in a single alias switch.

        The default distance is dot because LightGCN scores are dot products. Qdrant stores float32, and with
        cosine it stores the vectors normalised. `payloads` adds fields to each point's `id` and `version`.
        The previous version's collection is deleted after the switch.
        """
        started = time.perf_counter()
        alias = collection_name(namespace, model, kind)
        _check_part(version)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (count, dim), not of shape {vectors.shape}")
        if len(ids) != vectors.shape[0]:
            raise ValueError(f"{len(ids)} ids but {vectors.shape[0]} vectors")
        if payloads is not None and len(payloads) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(payloads)} payloads")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{len(ids) - len(set(ids))} duplicate ids: each id is one point")
        previous = self._target(alias)
        target = f"{alias}__{version}"
        if target == previous:
            raise ValueError(f"version {version!r} is already current in {alias}; sync a new version")
        if self.client.collection_exists(target):  # left behind by a sync that died before its switch
            self.client.delete_collection(target)
        self.client.create_collection(
            target, vectors_config=models.VectorParams(size=vectors.shape[1], distance=_DISTANCES[distance])
        )
        try:
            self._upload(target, version, ids, vectors, payloads, batch_size, progress)
        except BaseException:
            self.client.delete_collection(target)
            raise
        switch: list[models.AliasOperations] = [
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=target, alias_name=alias))
        ]
        if previous is not None:
            switch.insert(0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=switch)
        if previous is not None:
            self.client.delete_collection(previous)
        return SyncSummary(alias, version, len(ids), time.perf_counter() - started)

    def _upload(
        self,
        collection: str,
        version: str,
        ids: list[str],
        vectors: np.ndarray,
        payloads: list[dict[str, Any]] | None,
        batch_size: int,
        progress: bool,
    ) -> None:
        quiet = not progress or len(ids) <= batch_size
        with self._bulk_writes(collection), tqdm(total=len(ids), desc=collection, unit="vec", disable=quiet) as bar:
            for start in range(0, len(ids), batch_size):
                chunk = ids[start : start + batch_size]
                extra = payloads[start : start + batch_size] if payloads is not None else [{}] * len(chunk)
                batch = models.Batch(
                    ids=[point_id(i) for i in chunk],
                    vectors=vectors[start : start + batch_size].tolist(),
                    payloads=[{**more, "id": i, "version": version} for i, more in zip(chunk, extra, strict=True)],
                )
                self.client.upsert(collection, points=batch, wait=True)
                bar.update(len(chunk))

    @contextmanager
    def _bulk_writes(self, collection: str) -> Iterator[None]:
        """Local mode commits and fsyncs SQLite once per point (~1 ms each: minutes for 70k vectors).

        The new collection is invisible until the alias switch, so while it is written its SQLite file runs in
        WAL mode without fsync (still safe if the process dies), and is checkpointed with a full fsync before the
        switch. This reaches into QdrantLocal's internals, which is why qdrant-client is pinned. A no-op on a
        server.
        """
        local = self.client._client
        storage = local.collections[collection].storage if isinstance(local, QdrantLocal) else None
        if storage is None:  # a server, or ":memory:"
            yield
            return
        sqlite = storage.storage
        sqlite.execute("PRAGMA journal_mode=WAL")
        sqlite.execute("PRAGMA synchronous=OFF")
        try:
            yield
        finally:
            sqlite.execute("PRAGMA synchronous=FULL")
            sqlite.execute("PRAGMA journal_mode=DELETE")  # checkpoints the WAL into the file, fsynced

    def delete(self, namespace: str, model: str) -> None:
        """Drop every kind and version of one model, including collections of syncs that died."""
        aliases = [collection_name(namespace, model, kind) for kind in KINDS]
        current = {a.alias_name for a in self.client.get_aliases().aliases}
        drop = [
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            for alias in aliases
            if alias in current
        ]
        if drop:
            self.client.update_collection_aliases(change_aliases_operations=drop)
        for collection in self.client.get_collections().collections:
            if any(collection.name.startswith(f"{alias}__") for alias in aliases):
                self.client.delete_collection(collection.name)

    # -- reads ---------------------------------------------------------------------------------
    def current_version(self, namespace: str, model: str, kind: str) -> str | None:
        alias = collection_name(namespace, model, kind)
        target = self._target(alias)
        return None if target is None else target.removeprefix(f"{alias}__")

    def get_vector(self, namespace: str, model: str, kind: str, id: str) -> np.ndarray | None:
        """The stored vector (float32), or None when the id or the whole collection is unknown."""
        alias = collection_name(namespace, model, kind)
        try:
            points = self.client.retrieve(alias, ids=[point_id(id)], with_payload=False, with_vectors=True)
        except (ValueError, UnexpectedResponse):
            if self._target(alias) is None:
                return None
            raise
        return np.asarray(points[0].vector, dtype=np.float32) if points else None

    def search(
        self,
        namespace: str,
        model: str,
        kind: str,
        vector: np.ndarray,
        k: int,
        exclude_ids: list[str] | None = None,
    ) -> list[tuple[str, float]]:
        """The k best (id, score) by the collection's distance; empty when nothing was synced yet."""
        alias = collection_name(namespace, model, kind)
        query_filter = None
        if exclude_ids:
            query_filter = models.Filter(must_not=[models.HasIdCondition(has_id=[point_id(i) for i in exclude_ids])])
        try:
            hits = self.client.query_points(
                alias,
                query=np.asarray(vector, dtype=np.float32).ravel().tolist(),
                limit=k,
                query_filter=query_filter,
                with_payload=["id"],
            ).points
        except (ValueError, UnexpectedResponse):
            if self._target(alias) is None:
                return []
            raise
        return [(hit.payload["id"], hit.score) for hit in hits]

    def _target(self, alias: str) -> str | None:
        """The collection an alias points at. Reads ask only after a miss, as it costs a round trip."""
        return next((a.collection_name for a in self.client.get_aliases().aliases if a.alias_name == alias), None)
