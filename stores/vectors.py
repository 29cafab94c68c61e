"""Embeddings in Qdrant: one collection per namespace, model, kind and version, read through an alias.

The alias `{namespace}__{model}__{kind}` names the current version; each version is written into a collection
of its own, `{alias}__{version}`, sealed, and only then made current. All of a model's kinds (users, items)
switch together in one alias operation, so a reader sees one complete version, never a mix or a half-written
set. The alias's previous collection is kept (replicas still pinned to it keep working until they are rolled
forward); older ones are dropped.

Where the vectors live is `stores/vector_backends.py`: Qdrant's embedded engine by default, a Qdrant server when
`QDRANT_URL` is set. The calls here are the same for both.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from tqdm import tqdm

from stores.settings import Settings
from stores.vector_backends import (
    CollectionMissing,
    Distance,
    EmbeddedBackend,
    PayloadFilter,
    Points,
    ServerBackend,
    VectorBackend,
    VectorStoreUnavailable,
)

__all__ = ["VectorSet", "VectorStore", "VectorStoreUnavailable", "collection_name", "point_id"]

KINDS = ("users", "items")
# Fixed forever: point ids derive from it, so changing it orphans every stored vector.
POINT_ID_NAMESPACE = uuid.UUID("1db4e6b0-c839-59c9-83f4-ec0808f26820")
# Name parts may not contain "__", which separates them in collection names.
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(?:_[A-Za-z0-9.-]+)*$")


@functools.lru_cache(maxsize=1 << 16)  # every search maps its excluded ids (a user's history) again
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
class VectorSet:
    """One kind's vectors: row i of `vectors` belongs to `ids[i]`; `payloads[i]` adds searchable fields
    (category, provider, badges) to the point's own `id` and `version`."""

    ids: list[str]
    vectors: np.ndarray
    payloads: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vectors", np.ascontiguousarray(self.vectors, dtype=np.float32))
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (count, dim), not of shape {self.vectors.shape}")
        if len(self.ids) != self.vectors.shape[0]:
            raise ValueError(f"{len(self.ids)} ids but {self.vectors.shape[0]} vectors")
        if self.payloads is not None and len(self.payloads) != len(self.ids):
            raise ValueError(f"{len(self.ids)} ids but {len(self.payloads)} payloads")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"{len(self.ids) - len(set(self.ids))} duplicate ids: each id is one point")


@dataclass(frozen=True)
class SyncSummary:
    collection: str
    version: str
    count: int
    seconds: float


class VectorStore:
    """The served model versions' user and item vectors, and the content retriever's item vectors."""

    def __init__(self, backend: VectorBackend):
        self.backend = backend

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorStore:
        """The server at QDRANT_URL when set, otherwise the embedded engine under state_dir/vectors."""
        if settings.qdrant_url:
            # No version check on connect: a replica must come up (and report unhealthy) while the server is down.
            client = QdrantClient(
                url=settings.qdrant_url, api_key=settings.qdrant_api_key or None, timeout=5, check_compatibility=False
            )
            return cls(ServerBackend(client))
        return cls(EmbeddedBackend(settings.state_dir / "vectors"))

    @property
    def in_process(self) -> bool:
        """Whether the store is the embedded engine, read from local files, rather than a server."""
        return isinstance(self.backend, EmbeddedBackend)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check(self) -> None:
        """Raises VectorStoreUnavailable when the store cannot be reached or read."""
        self.backend.check()

    # -- writes --------------------------------------------------------------------------------
    def sync_version(
        self,
        namespace: str,
        model: str,
        version: str,
        sets: dict[str, VectorSet],
        distance: Distance = "dot",
        batch_size: int = 1024,
        progress: bool = True,
    ) -> list[SyncSummary]:
        """Write every kind of one model version, then make them current together in one alias switch.

        The default distance is dot because the models score with dot products (the content retriever's vectors
        are normalised, so dot is its cosine too).
        """
        started = time.perf_counter()
        _check_part(version)
        aliases = {kind: collection_name(namespace, model, kind) for kind in sets}
        with self.backend.writing():
            previous = self.backend.aliases()
            targets = {aliases[kind]: f"{aliases[kind]}__{version}" for kind in sets}
            for alias, target in targets.items():
                if previous.get(alias) == target:
                    raise ValueError(f"version {version!r} is already current in {alias}; sync a new version")
            written: list[str] = []
            try:
                for kind, vector_set in sets.items():
                    target = targets[aliases[kind]]
                    if target in self.backend.collections():  # left behind by a sync that died before its switch
                        self.backend.drop(target)
                    self.backend.create(target, vector_set.vectors.shape[1], distance)
                    written.append(target)
                    self._upload(target, version, vector_set, batch_size, progress)
                    self.backend.seal(target)
            except BaseException:
                for target in written:
                    self.backend.drop(target)
                raise
            self.backend.switch_aliases(dict(targets))
            self._drop_stale(targets, previous)
        seconds = time.perf_counter() - started
        return [SyncSummary(aliases[kind], version, len(s.ids), seconds) for kind, s in sets.items()]

    def _upload(self, collection: str, version: str, vector_set: VectorSet, batch_size: int, progress: bool) -> None:
        ids, payloads = vector_set.ids, vector_set.payloads
        quiet = not progress or len(ids) <= batch_size
        with tqdm(total=len(ids), desc=collection, unit="vec", disable=quiet) as bar:
            for start in range(0, len(ids), batch_size):
                chunk = ids[start : start + batch_size]
                extra = payloads[start : start + batch_size] if payloads is not None else [{}] * len(chunk)
                self.backend.upsert(
                    collection,
                    Points(
                        ids=[point_id(i) for i in chunk],
                        vectors=vector_set.vectors[start : start + batch_size],
                        payloads=[{**more, "id": i, "version": version} for i, more in zip(chunk, extra, strict=True)],
                    ),
                )
                bar.update(len(chunk))

    def _drop_stale(self, current: dict[str, str], previous: dict[str, str]) -> None:
        """Keep each alias's new and previous collection; drop its older ones (and those of dead syncs)."""
        keep = {*current.values(), *(previous[a] for a in current if a in previous)}
        for name in self.backend.collections():
            if name not in keep and any(name.startswith(f"{alias}__") for alias in current):
                self.backend.drop(name)

    def delete(self, namespace: str, model: str) -> None:
        """Drop every kind and version of one model, including collections of syncs that died."""
        aliases = [collection_name(namespace, model, kind) for kind in KINDS]
        with self.backend.writing():
            self.backend.switch_aliases({alias: None for alias in aliases})
            for name in self.backend.collections():
                if any(name.startswith(f"{alias}__") for alias in aliases):
                    self.backend.drop(name)

    # -- reads ---------------------------------------------------------------------------------
    def current_version(self, namespace: str, model: str, kind: str) -> str | None:
        alias = collection_name(namespace, model, kind)
        target = self.backend.aliases().get(alias)
        return None if target is None else target.removeprefix(f"{alias}__")

    def get_vector(self, namespace: str, model: str, kind: str, id: str, version: str | None = None) -> np.ndarray | None:
        """The stored vector (float32), or None when the id or the whole collection is unknown.
        `version`: that version's collection rather than the current one."""
        return self.get_vectors(namespace, model, kind, [id], version)[0]

    def get_vectors(
        self, namespace: str, model: str, kind: str, ids: list[str], version: str | None = None
    ) -> list[np.ndarray | None]:
        """`get_vector` for many ids in one call: a vector, or None, per id."""
        points = [point_id(i) for i in ids]
        try:
            found = self.backend.retrieve(_source(namespace, model, kind, version), points)
        except CollectionMissing:
            return [None] * len(ids)
        return [found.get(point) for point in points]

    def count(self, namespace: str, model: str, kind: str, version: str | None = None) -> int:
        """Points in the current (or that) version; 0 when nothing was synced."""
        try:
            return self.backend.count(_source(namespace, model, kind, version))
        except CollectionMissing:
            return 0

    def search(
        self,
        namespace: str,
        model: str,
        kind: str,
        vector: np.ndarray,
        k: int,
        exclude_ids: list[str] | tuple[str, ...] = (),
        category: str | None = None,
        provider: str | None = None,
        badges: list[str] | tuple[str, ...] = (),
        version: str | None = None,
    ) -> list[tuple[str, float]]:
        """The k best (id, score) by the collection's distance, among points of that category and provider
        carrying any of `badges`, minus `exclude_ids`; empty when nothing was synced yet."""
        where = PayloadFilter(category, provider, tuple(badges), tuple(point_id(i) for i in exclude_ids))
        query = np.asarray(vector, dtype=np.float32).ravel()
        try:
            hits = self.backend.query(_source(namespace, model, kind, version), query, k, where)
        except CollectionMissing:
            return []
        return [(hit.id, hit.score) for hit in hits]


def _source(namespace: str, model: str, kind: str, version: str | None) -> str:
    alias = collection_name(namespace, model, kind)
    return alias if version is None else f"{alias}__{version}"
