"""The two places vectors can live, behind one small interface the `VectorStore` is written against.

- `EmbeddedBackend` (the zero-setup default): Qdrant's embedded engine, qdrant-edge-py. Each collection is an
  edge shard folder, searched in-process by Qdrant's Rust HNSW and payload indexes. qdrant-client's own local
  mode is not used: it is brute force in Python (DESIGN.md measured ~300 ms per filtered search at 50k points,
  far off a serving hot path); `python -m benchmarks.vector_search` measures both.
- `ServerBackend`: a Qdrant server through qdrant-client (`QDRANT_URL`), the production store.

Both take the same calls, named after Qdrant's: create a collection with keyword payload indexes, upsert
points, seal, switch aliases in one operation, query with a filter, retrieve a vector, drop.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import qdrant_edge as edge
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

Distance = Literal["dot", "cosine"]
# Payload fields that get a keyword index, so filtered searches stay fast.
INDEXED_FIELDS = ("category", "provider", "badges")
# HNSW graph degree and build beam, above Qdrant's defaults (16, 100) for recall on 384-d text vectors at the
# cost of a slower index build: `benchmarks/vector_search.py --hnsw 16 100` measures the defaults.
HNSW_M, HNSW_EF_CONSTRUCT = 32, 256


class VectorStoreUnavailable(RuntimeError):
    """The store cannot be reached or read; callers degrade (the cascade falls through) instead of failing."""


class CollectionMissing(LookupError):
    """The collection (or alias) does not exist: nothing was synced under that name."""


@dataclass(frozen=True)
class PayloadFilter:
    """What a search may return: exact category and provider, any of the badges, none of the excluded ids.

    `exclude` holds point ids (see `stores.vectors.point_id`)."""

    category: str | None = None
    provider: str | None = None
    badges: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.category or self.provider or self.badges or self.exclude)


@dataclass(frozen=True)
class Hit:
    id: str  # the caller's id, from the payload
    score: float


@dataclass(frozen=True)
class Points:
    ids: list[str]  # point ids
    vectors: np.ndarray  # [n, dim] float32
    payloads: list[dict[str, Any]]


class VectorBackend(Protocol):
    def aliases(self) -> dict[str, str]: ...
    def collections(self) -> list[str]: ...
    def create(self, name: str, dim: int, distance: Distance) -> None: ...
    def upsert(self, name: str, points: Points) -> None: ...
    def seal(self, name: str) -> None: ...
    def switch_aliases(self, targets: dict[str, str | None]) -> None: ...
    def writing(self) -> AbstractContextManager[None]: ...
    def drop(self, name: str) -> None: ...
    def query(self, name: str, vector: np.ndarray, k: int, where: PayloadFilter) -> list[Hit]: ...
    def retrieve(self, name: str, points: list[str]) -> dict[str, np.ndarray]: ...
    def count(self, name: str) -> int: ...
    def check(self) -> None: ...
    def close(self) -> None: ...


# -- embedded: qdrant-edge ------------------------------------------------------------------------------
_EDGE_DISTANCES = {"dot": edge.Distance.Dot, "cosine": edge.Distance.Cosine}


@dataclass
class EmbeddedBackend:
    """Edge shards under `root/collections/<name>`; aliases in `root/aliases.json`.

    - **Alias switch:** the alias file is rewritten whole and renamed into place, so every alias in one switch
      changes together, and a reader sees the old file or the new one.
    - **Readers:** they re-check the file's identity (one `stat`) on each alias lookup, so other processes pick
      up a switch on their next search.
    - **Immutability:** a collection is written by one process and sealed before any alias points at it.
      After that it never changes.
    - **No WAL:** shards are created without a write-ahead log. Sealing flushes them, and without a WAL lock
      any number of processes (the Serve replicas) can open the same shard at once.
    - **Writers:** they take `root/write.lock`, so two syncs cannot interleave their alias updates.
    """

    root: Path
    max_open: int = 8  # shards kept open for reading (least recently used closed beyond)
    hnsw_m: int = HNSW_M
    hnsw_ef_construct: int = HNSW_EF_CONSTRUCT
    _readers: OrderedDict[str, edge.EdgeShard] = field(default_factory=OrderedDict, init=False)
    _writing: dict[str, edge.EdgeShard] = field(default_factory=dict, init=False)
    _alias_stamp: tuple[int, int] | None = field(default=None, init=False)
    _alias_map: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        (self.root / "collections").mkdir(parents=True, exist_ok=True)

    @property
    def _alias_file(self) -> Path:
        return self.root / "aliases.json"

    def _path(self, name: str) -> Path:
        return self.root / "collections" / name

    def aliases(self) -> dict[str, str]:
        try:
            stat = self._alias_file.stat()
        except FileNotFoundError:
            if not (self.root / "collections").is_dir():  # the store itself is gone, not merely empty
                raise VectorStoreUnavailable(f"{self.root} is missing") from None
            return {}
        except OSError as error:
            raise VectorStoreUnavailable(f"cannot read {self._alias_file}: {error}") from error
        stamp = (stat.st_ino, stat.st_mtime_ns)
        if stamp != self._alias_stamp:
            self._alias_map = json.loads(self._alias_file.read_text())
            self._alias_stamp = stamp
        return self._alias_map

    def collections(self) -> list[str]:
        return sorted(p.name for p in (self.root / "collections").iterdir() if p.is_dir())

    def create(self, name: str, dim: int, distance: Distance) -> None:
        config = edge.EdgeConfig(
            vectors=edge.EdgeVectorParams(size=dim, distance=_EDGE_DISTANCES[distance]),
            hnsw_config=edge.HnswIndexConfig(
                m=self.hnsw_m, ef_construct=self.hnsw_ef_construct, full_scan_threshold=10_000
            ),
            wal_enabled=False,
        )
        shard = edge.EdgeShard.create(str(self._path(name)), config)
        for key in INDEXED_FIELDS:
            shard.update(edge.UpdateOperation.create_field_index(key, edge.PayloadSchemaType.Keyword))
        self._writing[name] = shard

    def upsert(self, name: str, points: Points) -> None:
        batch = [
            edge.Point(id=point, vector=vector, payload=payload)
            for point, vector, payload in zip(points.ids, points.vectors.tolist(), points.payloads, strict=True)
        ]
        self._writing[name].update(edge.UpdateOperation.upsert_points(batch))

    def seal(self, name: str) -> None:
        """Build the HNSW and payload indexes, write everything to disk, and close: the collection is final."""
        shard = self._writing.pop(name)
        shard.optimize()
        shard.flush()
        shard.close()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """One writer at a time: its collections, alias switch and clean-up do not interleave with another's."""
        with open(self.root / "write.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def switch_aliases(self, targets: dict[str, str | None]) -> None:
        """Point each alias at its collection (None removes it), all in one rename. Call inside `writing()`."""
        self._alias_stamp = None
        updated = {**self.aliases(), **targets}
        updated = {alias: name for alias, name in updated.items() if name is not None}
        staged = self._alias_file.with_suffix(f".{os.getpid()}.tmp")
        with open(staged, "w") as out:
            json.dump(updated, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staged, self._alias_file)
        directory = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)

    def drop(self, name: str) -> None:
        for shards in (self._readers, self._writing):
            if (shard := shards.pop(name, None)) is not None:
                shard.close()
        shutil.rmtree(self._path(name), ignore_errors=True)

    def _resolve(self, name: str) -> str:
        return self.aliases().get(name, name)

    def _reader(self, name: str) -> edge.EdgeShard:
        name = self._resolve(name)
        shard = self._readers.get(name)
        if shard is not None:
            self._readers.move_to_end(name)
            return shard
        path = self._path(name)
        if not (path / "edge_config.json").exists():
            raise CollectionMissing(name)
        try:
            shard = edge.EdgeShard.load(str(path))
        except Exception as error:  # the engine raises plain exceptions for unreadable files
            raise VectorStoreUnavailable(f"cannot open vector collection {name}: {error}") from error
        self._readers[name] = shard
        while len(self._readers) > self.max_open:
            self._readers.popitem(last=False)[1].close()
        return shard

    def query(self, name: str, vector: np.ndarray, k: int, where: PayloadFilter) -> list[Hit]:
        request = edge.QueryRequest(
            limit=k,
            query=edge.Query.Nearest(vector.tolist()),
            filter=_edge_filter(where) if where else None,
            with_payload=["id"],
        )
        return [Hit(point.payload["id"], point.score) for point in self._reader(name).query(request)]

    def retrieve(self, name: str, points: list[str]) -> dict[str, np.ndarray]:
        records = self._reader(name).retrieve(points, with_payload=False, with_vector=True)
        return {str(r.id): np.asarray(r.vector, dtype=np.float32) for r in records}

    def count(self, name: str) -> int:
        return self._reader(name).count(edge.CountRequest(exact=True))

    def check(self) -> None:
        if not os.access(self.root / "collections", os.R_OK | os.X_OK):
            raise VectorStoreUnavailable(f"{self.root} is not readable")
        self.aliases()

    def close(self) -> None:
        for shards in (self._readers, self._writing):
            for shard in shards.values():
                shard.close()
            shards.clear()


def _edge_filter(where: PayloadFilter) -> edge.Filter:
    must: list[Any] = []
    if where.category is not None:
        must.append(edge.FieldCondition(key="category", match=edge.MatchValue(value=where.category)))
    if where.provider is not None:
        must.append(edge.FieldCondition(key="provider", match=edge.MatchValue(value=where.provider)))
    if where.badges:
        must.append(edge.FieldCondition(key="badges", match=edge.MatchAny(any=list(where.badges))))
    must_not = [edge.HasIdCondition(point_ids=set(where.exclude))] if where.exclude else None
    return edge.Filter(must=must or None, must_not=must_not)


# -- a Qdrant server: qdrant-client ------------------------------------------------------------------------
_SERVER_DISTANCES = {"dot": models.Distance.DOT, "cosine": models.Distance.COSINE}


@dataclass
class ServerBackend:
    """A Qdrant server. Aliases are the server's own, switched in one `update_collection_aliases` call.

    qdrant-client's local mode (`QdrantClient(":memory:")`) answers the same calls, which is how the tests
    cover this class without a server.
    """

    client: QdrantClient

    @contextmanager
    def _errors(self, name: str | None = None) -> Iterator[None]:
        """Translate the client's errors: 404 or an unknown name means missing, no connection means unavailable."""
        try:
            yield
        except UnexpectedResponse as error:
            if error.status_code == 404 and name is not None:
                raise CollectionMissing(name) from error
            raise VectorStoreUnavailable(f"Qdrant answered {error.status_code}") from error
        except ResponseHandlingException as error:  # connection refused, timeouts
            raise VectorStoreUnavailable(f"Qdrant is unreachable: {error}") from error
        except ValueError as error:  # local mode's "Collection ... not found"
            if name is not None and "not found" in str(error):
                raise CollectionMissing(name) from error
            raise

    def aliases(self) -> dict[str, str]:
        with self._errors():
            return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def collections(self) -> list[str]:
        with self._errors():
            return sorted(c.name for c in self.client.get_collections().collections)

    def create(self, name: str, dim: int, distance: Distance) -> None:
        with self._errors():
            self.client.create_collection(
                name,
                vectors_config=models.VectorParams(size=dim, distance=_SERVER_DISTANCES[distance]),
                hnsw_config=models.HnswConfigDiff(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT),
            )
            for key in INDEXED_FIELDS:
                self.client.create_payload_index(name, key, field_schema=models.PayloadSchemaType.KEYWORD)

    def upsert(self, name: str, points: Points) -> None:
        batch = models.Batch(ids=points.ids, vectors=points.vectors.tolist(), payloads=points.payloads)
        with self._errors(name):
            self.client.upsert(name, points=batch, wait=True)

    def writing(self) -> AbstractContextManager[None]:
        return nullcontext()  # the server serialises alias operations itself

    def seal(self, name: str) -> None:
        """The server indexes in the background and serves exact results meanwhile: nothing to wait for."""

    def switch_aliases(self, targets: dict[str, str | None]) -> None:
        current = self.aliases()
        operations: list[models.AliasOperations] = []
        for alias, name in targets.items():
            if alias in current:
                operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
            if name is not None:
                operations.append(
                    models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=name, alias_name=alias))
                )
        if operations:
            with self._errors():
                self.client.update_collection_aliases(change_aliases_operations=operations)

    def drop(self, name: str) -> None:
        with self._errors():
            self.client.delete_collection(name)

    def query(self, name: str, vector: np.ndarray, k: int, where: PayloadFilter) -> list[Hit]:
        with self._errors(name):
            hits = self.client.query_points(
                name,
                query=vector.tolist(),
                limit=k,
                query_filter=_server_filter(where) if where else None,
                with_payload=["id"],
            ).points
        return [Hit(hit.payload["id"], hit.score) for hit in hits]

    def retrieve(self, name: str, points: list[str]) -> dict[str, np.ndarray]:
        with self._errors(name):
            records = self.client.retrieve(name, ids=points, with_payload=False, with_vectors=True)
        return {str(r.id): np.asarray(r.vector, dtype=np.float32) for r in records}

    def count(self, name: str) -> int:
        with self._errors(name):
            return self.client.count(name, exact=True).count

    def check(self) -> None:
        with self._errors():
            self.client.get_collections()

    def close(self) -> None:
        self.client.close()


def _server_filter(where: PayloadFilter) -> models.Filter:
    must: list[models.Condition] = []
    for key, value in (("category", where.category), ("provider", where.provider)):
        if value is not None:
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    if where.badges:
        must.append(models.FieldCondition(key="badges", match=models.MatchAny(any=list(where.badges))))
    must_not: Sequence[models.Condition] | None = (
        [models.HasIdCondition(has_id=list(where.exclude))] if where.exclude else None
    )
    return models.Filter(must=must or None, must_not=must_not)
