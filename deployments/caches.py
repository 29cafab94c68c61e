"""The ingress's in-memory state that keeps PostgreSQL off the /v1/recommend path.

- `CatalogSnapshot`: item_id -> (title, provider, category), loaded whole at start and refreshed in
  the background; an item missing from it (added since) is looked up in one batched query.
- `PerUserCache`: per-user values (a user's seen items, a user's recommendation pages) with a TTL
  and an LRU bound, dropped or updated when that user's interactions are stored.

No Ray here: the ingress counts hits and misses in its metrics from what these return. Everything
is meant for ONE asyncio event loop (the ingress replica's); blocking loads run in worker threads
and only their results touch the caches, back on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from cachetools import LRUCache, TTLCache

log = logging.getLogger(__name__)

V = TypeVar("V")


class ItemMeta(NamedTuple):
    """The catalogue fields a recommended item is enriched with."""

    title: str | None
    provider: str | None
    category: str | None


@dataclass(frozen=True)
class Lookup(Generic[V]):
    value: V
    hits: int
    misses: int


# -- the catalogue snapshot -------------------------------------------------------------------------


class CatalogSnapshot:
    """The whole catalogue's display fields in memory, replaced atomically by each refresh.

    `load_all()` reads the items table (one query); `load_some(ids)` reads the given ids (one
    batched query, for items added since the last refresh). Both are blocking and run in a worker
    thread. A failing load leaves the previous snapshot in place (empty if none succeeded yet).
    """

    def __init__(
        self,
        load_all: Callable[[], Mapping[str, ItemMeta]],
        load_some: Callable[[list[str]], Mapping[str, ItemMeta]],
        refresh_s: float,
        retry_s: float = 5.0,
        max_absent: int = 10_000,
        on_refresh: Callable[[int], None] | None = None,
    ):
        self._load_all, self._load_some = load_all, load_some
        self.refresh_s, self.retry_s = refresh_s, min(retry_s, refresh_s)
        self._items: dict[str, ItemMeta] = {}
        # Ids the database did not know either: not asked again until the next refresh.
        self._absent: TTLCache[str, bool] = TTLCache(max_absent, ttl=refresh_s)
        self.loaded_at: float | None = None  # time.monotonic() of the last successful full load
        self._task: asyncio.Task | None = None
        self._on_refresh = on_refresh  # told the item count after each successful refresh

    @classmethod
    def from_store(cls, store: Any, refresh_s: float, **options: Any) -> CatalogSnapshot:
        """A snapshot of an EventStore's items table (`catalog_entries`, `items_by_id`)."""

        def load_all() -> dict[str, ItemMeta]:
            return {item_id: ItemMeta(*fields) for item_id, *fields in store.catalog_entries()}

        def load_some(ids: list[str]) -> dict[str, ItemMeta]:
            found = store.items_by_id(ids)
            return {i: ItemMeta(m["title"], m["provider"], m["category"]) for i, m in found.items()}

        return cls(load_all, load_some, refresh_s, **options)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def loaded(self) -> bool:
        return self.loaded_at is not None

    async def refresh(self) -> bool:
        """Replace the snapshot with a fresh full load. Returns whether it succeeded."""
        try:
            items = await asyncio.to_thread(self._load_all)
        except Exception as error:  # noqa: BLE001 - the ingress serves on without enrichment
            log.warning("catalogue snapshot not refreshed (%s); keeping %d items", type(error).__name__, len(self))
            return False
        self._items = dict(items)
        self._absent.clear()
        self.loaded_at = time.monotonic()
        if self._on_refresh is not None:
            self._on_refresh(len(self._items))
        return True

    def start(self) -> asyncio.Task:
        """Refresh in the background from now on, every `refresh_s` (every `retry_s` until one succeeds)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever(), name="catalog-refresh")
        return self._task

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s if self.loaded else self.retry_s)
            await self.refresh()

    async def lookup(self, item_ids: Iterable[str]) -> Lookup[dict[str, ItemMeta]]:
        """Metadata for the ids; those missing from the snapshot come from one batched query.

        `misses` counts ids that were not in the snapshot. An id the database does not know either,
        or one that could not be looked up (database down), is left out of the result.
        """
        ids = list(dict.fromkeys(item_ids))
        items = self._items
        found = {i: items[i] for i in ids if i in items}
        missing = [i for i in ids if i not in found and i not in self._absent]
        if missing:
            try:
                fetched = dict(await asyncio.to_thread(self._load_some, missing))
            except Exception as error:  # noqa: BLE001 - enrichment is best effort
                log.warning("catalogue lookup of %d items failed: %s", len(missing), type(error).__name__)
                fetched = {}
            else:
                for item_id in missing:
                    if item_id not in fetched:
                        self._absent[item_id] = True
            self._items.update(fetched)  # kept until the next refresh, which will hold them anyway
            found.update(fetched)
        return Lookup(found, hits=len(ids) - len(missing), misses=len(missing))


# -- per-user caches --------------------------------------------------------------------------------

_MISSING = object()


class PerUserCache(Generic[V]):
    """Values per (user, variant), expiring `ttl_s` after a user's entry was created, with the
    least recently used users evicted beyond `max_users`.

    A variant is whatever else the value depends on (for recommendation pages: k, offset, filters,
    ...); up to `max_variants` are kept per user. `invalidate(user)` drops all of a user's variants,
    and `update(user, fn)` changes them in place (without extending their TTL). Either one also
    wins over a load for that user that was in flight when it happened: such a load's result is
    returned to its caller but not stored, since it may predate the change.

    `ttl_s <= 0` or `max_users <= 0` turns the cache off: every `get_or_load` loads.
    """

    def __init__(self, max_users: int, ttl_s: float, max_variants: int = 16, timer: Callable[[], float] = time.monotonic):
        self.enabled = ttl_s > 0 and max_users > 0
        self._entries: TTLCache[Hashable, LRUCache] = TTLCache(max(max_users, 1), ttl=max(ttl_s, 1e-9), timer=timer)
        self.max_variants = max_variants
        # Generation per user, kept only while loads for that user are in flight.
        self._generations: dict[Hashable, int] = {}
        self._in_flight: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user: Hashable, variant: Hashable = None) -> Any:
        """The cached value, or None when there is none (or it expired)."""
        value = self._get(user, variant)
        return None if value is _MISSING else value

    def _get(self, user: Hashable, variant: Hashable) -> Any:
        if not self.enabled:
            return _MISSING
        variants = self._entries.get(user)
        if variants is None:
            return _MISSING
        return variants.get(variant, _MISSING)

    def put(self, user: Hashable, variant: Hashable, value: V, generation: int | None = None) -> bool:
        """Store a value; with `generation` (from `begin`), only if the user was not changed since."""
        if not self.enabled or (generation is not None and self._generations.get(user) != generation):
            return False
        variants = self._entries.get(user)
        if variants is None:
            variants = LRUCache(self.max_variants)
            self._entries[user] = variants  # the user's TTL starts here; later variants do not extend it
        variants[variant] = value
        return True

    def begin(self, user: Hashable) -> int:
        """Mark a load for `user` as started; pass the returned generation to `put` and call `end`."""
        self._in_flight[user] = self._in_flight.get(user, 0) + 1
        return self._generations.setdefault(user, 0)

    def end(self, user: Hashable) -> None:
        left = self._in_flight[user] - 1
        if left:
            self._in_flight[user] = left
        else:
            del self._in_flight[user]
            del self._generations[user]

    async def get_or_load(
        self,
        user: Hashable,
        variant: Hashable,
        load: Callable[[], Awaitable[V]],
        keep: Callable[[V], bool] | None = None,
    ) -> tuple[V, bool]:
        """(value, hit): the cached value, or `load()`'s result, which is then stored unless `keep`
        says otherwise (e.g. a degraded answer that should not be served again)."""
        value = self._get(user, variant)
        if value is not _MISSING:
            return value, True
        generation = self.begin(user)
        try:
            value = await load()
            if keep is None or keep(value):
                self.put(user, variant, value, generation)
        finally:
            self.end(user)
        return value, False

    def invalidate(self, user: Hashable) -> None:
        self._entries.pop(user, None)
        self._changed(user)

    def update(self, user: Hashable, change: Callable[[V], V]) -> None:
        """Apply `change` to each cached variant of the user (nothing cached: nothing to do)."""
        variants = self._entries.get(user)
        if variants is not None:
            for variant in list(variants):
                variants[variant] = change(variants[variant])
        self._changed(user)

    def _changed(self, user: Hashable) -> None:
        if user in self._generations:
            self._generations[user] += 1

    def clear(self) -> None:
        self._entries.clear()
        for user in self._generations:
            self._generations[user] += 1


class SeenItems:
    """A user's seen item ids (for exclude_seen), cached per user; fresh events are added in place."""

    def __init__(self, load: Callable[[str], Iterable[str]], max_users: int, ttl_s: float, timer=time.monotonic):
        self._load = load  # blocking: runs in a worker thread
        self.cache: PerUserCache[frozenset[str]] = PerUserCache(max_users, ttl_s, max_variants=1, timer=timer)

    async def get(self, user_id: str) -> tuple[frozenset[str], bool]:
        """(seen item ids, hit). Raises what the loader raises (nothing is cached then)."""

        async def load() -> frozenset[str]:
            return frozenset(await asyncio.to_thread(self._load, user_id))

        return await self.cache.get_or_load(user_id, None, load)

    def add(self, user_id: str, item_ids: Iterable[str]) -> None:
        """The user's new events are stored: their items count as seen from now on."""
        new = frozenset(item_ids)
        self.cache.update(user_id, lambda seen: seen | new)


def result_variant(request: Any, model_versions: Mapping[str, str | None]) -> tuple:
    """The part of a result-cache key beside the user: every request field that shapes the answer
    (k, offset, filters, context device and attributes, session items, exclude ids, strategy) and the
    model versions that produced it. `context.time` is left out: it would make every key unique."""
    fields = request.model_dump_json(exclude={"user_id": True, "context": {"time"}})
    return fields, tuple(sorted(model_versions.items()))
