"""The ingress's caches and catalogue snapshot, without Ray or PostgreSQL (loaders are stand-ins)."""

from __future__ import annotations

import asyncio

import psycopg2
import pytest

from deployments.caches import CatalogSnapshot, ItemMeta, PerUserCache, SeenItems, result_variant
from deployments.schemas import RecommendRequest


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(coroutine):
    return asyncio.run(coroutine)


# -- PerUserCache -----------------------------------------------------------------------------------


def test_values_expire_after_the_ttl_and_variants_do_not_extend_it():
    clock = Clock()
    cache: PerUserCache[str] = PerUserCache(max_users=10, ttl_s=30, timer=clock)
    cache.put("u", "a", "A")
    clock.now = 20
    cache.put("u", "b", "B")
    assert cache.get("u", "a") == "A" and cache.get("u", "b") == "B"
    assert cache.get("u", "c") is None and cache.get("v", "a") is None
    clock.now = 31  # the user's entry was created at 0: both variants are gone
    assert cache.get("u", "a") is None and cache.get("u", "b") is None


def test_least_recently_used_users_are_evicted():
    cache: PerUserCache[int] = PerUserCache(max_users=2, ttl_s=60)
    cache.put("u1", None, 1)
    cache.put("u2", None, 2)
    assert cache.get("u1") == 1  # u1 is now more recent than u2
    cache.put("u3", None, 3)
    assert cache.get("u2") is None
    assert cache.get("u1") == 1 and cache.get("u3") == 3
    assert len(cache) == 2


def test_variants_per_user_are_bounded():
    cache: PerUserCache[int] = PerUserCache(max_users=2, ttl_s=60, max_variants=2)
    for n in range(3):
        cache.put("u", n, n)
    assert cache.get("u", 0) is None and cache.get("u", 1) == 1 and cache.get("u", 2) == 2


def test_get_or_load_loads_once_then_hits():
    cache: PerUserCache[str] = PerUserCache(max_users=10, ttl_s=60)
    calls = []

    async def load():
        calls.append(1)
        return "value"

    async def twice():
        return await cache.get_or_load("u", "k", load), await cache.get_or_load("u", "k", load)

    first, second = run(twice())
    assert first == ("value", False) and second == ("value", True)
    assert len(calls) == 1


def test_keep_false_returns_the_value_without_caching_it():
    cache: PerUserCache[str] = PerUserCache(max_users=10, ttl_s=60)

    async def load():
        return "degraded"

    assert run(cache.get_or_load("u", "k", load, keep=lambda v: v != "degraded")) == ("degraded", False)
    assert cache.get("u", "k") is None


def test_a_failing_load_caches_nothing_and_leaves_no_state():
    cache: PerUserCache[str] = PerUserCache(max_users=10, ttl_s=60)

    async def load():
        raise psycopg2.OperationalError("down")

    with pytest.raises(psycopg2.OperationalError):
        run(cache.get_or_load("u", "k", load))
    assert cache.get("u", "k") is None
    assert not cache._in_flight and not cache._generations


def test_invalidation_drops_every_variant_of_that_user_only():
    cache: PerUserCache[str] = PerUserCache(max_users=10, ttl_s=60)
    cache.put("u", 1, "a")
    cache.put("u", 2, "b")
    cache.put("v", 1, "c")
    cache.invalidate("u")
    assert cache.get("u", 1) is None and cache.get("u", 2) is None
    assert cache.get("v", 1) == "c"


def test_a_load_in_flight_during_an_invalidation_is_not_stored():
    """The answer may predate the user's new event: it is returned once, never cached."""
    cache: PerUserCache[str] = PerUserCache(max_users=10, ttl_s=60)

    async def scenario():
        started, release = asyncio.Event(), asyncio.Event()

        async def slow_load():
            started.set()
            await release.wait()
            return "stale"

        task = asyncio.create_task(cache.get_or_load("u", "k", slow_load))
        await started.wait()
        cache.invalidate("u")  # the user's interaction was stored meanwhile
        release.set()
        value = await task

        async def fresh_load():
            return "fresh"

        return value, await cache.get_or_load("u", "k", fresh_load)

    value, after = run(scenario())
    assert value == ("stale", False)
    assert after == ("fresh", False)
    assert cache.get("u", "k") == "fresh"


def test_a_load_in_flight_for_another_user_is_still_stored():
    cache: PerUserCache[str] = PerUserCache(max_users=10, ttl_s=60)

    async def scenario():
        release = asyncio.Event()

        async def slow_load():
            await release.wait()
            return "v"

        task = asyncio.create_task(cache.get_or_load("u", "k", slow_load))
        await asyncio.sleep(0)
        cache.invalidate("someone-else")
        release.set()
        return await task

    assert run(scenario()) == ("v", False)
    assert cache.get("u", "k") == "v"


def test_ttl_zero_turns_the_cache_off():
    cache: PerUserCache[str] = PerUserCache(max_users=10, ttl_s=0)
    assert not cache.enabled
    calls = []

    async def load():
        calls.append(1)
        return "x"

    run(cache.get_or_load("u", None, load))
    assert run(cache.get_or_load("u", None, load)) == ("x", False)
    assert len(calls) == 2


# -- SeenItems --------------------------------------------------------------------------------------


def test_seen_items_are_loaded_once_and_fresh_events_are_added_in_place():
    clock = Clock()
    loads = []

    def load(user_id):
        loads.append(user_id)
        return ["i1", "i2"]

    seen = SeenItems(load, max_users=10, ttl_s=60, timer=clock)
    assert run(seen.get("u")) == (frozenset({"i1", "i2"}), False)
    assert run(seen.get("u")) == (frozenset({"i1", "i2"}), True)
    clock.now = 50
    seen.add("u", ["i3"])
    assert run(seen.get("u")) == (frozenset({"i1", "i2", "i3"}), True)
    clock.now = 61  # adding did not extend the entry's TTL: events from elsewhere show up on time
    assert run(seen.get("u")) == (frozenset({"i1", "i2"}), False)
    assert loads == ["u", "u"]


def test_adding_for_an_uncached_user_caches_nothing():
    seen = SeenItems(lambda user_id: ["i1"], max_users=10, ttl_s=60)
    seen.add("u", ["i9"])
    assert run(seen.get("u")) == (frozenset({"i1"}), False)  # from the store, which holds i9 by then


def test_a_seen_load_racing_a_new_event_is_not_cached():
    async def scenario():
        started, release = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        rows = [["old"], ["old", "new"]]

        def load(user_id):
            asyncio.run_coroutine_threadsafe(_set(started), loop).result()
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return rows.pop(0)

        seen = SeenItems(load, max_users=10, ttl_s=60)
        task = asyncio.create_task(seen.get("u"))
        await started.wait()
        seen.add("u", ["new"])  # stored after the load read the table
        release.set()
        first = await task
        release.set()
        return first, await seen.get("u")

    first, second = run(scenario())
    assert first == (frozenset({"old"}), False)
    assert second == (frozenset({"old", "new"}), False)  # reloaded, not the stale set


async def _set(event: asyncio.Event) -> None:
    event.set()


# -- CatalogSnapshot --------------------------------------------------------------------------------

CATALOGUE = {"a": ItemMeta("A", "p1", "c1"), "b": ItemMeta("B", "p2", "c2")}


class FakeCatalog:
    def __init__(self, items: dict[str, ItemMeta], down: bool = False):
        self.items, self.down = dict(items), down
        self.full_loads = 0
        self.batches: list[list[str]] = []

    def load_all(self):
        self._check()
        self.full_loads += 1
        return dict(self.items)

    def load_some(self, ids):
        self._check()
        self.batches.append(list(ids))
        return {i: self.items[i] for i in ids if i in self.items}

    def _check(self):
        if self.down:
            raise psycopg2.OperationalError("connection refused")


def test_snapshot_serves_lookups_without_the_database():
    db = FakeCatalog(CATALOGUE)
    snapshot = CatalogSnapshot(db.load_all, db.load_some, refresh_s=60)
    assert run(snapshot.refresh()) and len(snapshot) == 2
    found = run(snapshot.lookup(["b", "a", "b"]))
    assert found.value == {"a": CATALOGUE["a"], "b": CATALOGUE["b"]}
    assert (found.hits, found.misses) == (2, 0)
    assert db.batches == []


def test_items_added_since_the_snapshot_come_from_one_batched_lookup():
    db = FakeCatalog(CATALOGUE)
    snapshot = CatalogSnapshot(db.load_all, db.load_some, refresh_s=60)
    run(snapshot.refresh())
    db.items["c"] = ItemMeta("C", "p3", "c3")
    db.items["d"] = ItemMeta("D", "p3", "c3")
    found = run(snapshot.lookup(["a", "c", "d", "ghost"]))
    assert set(found.value) == {"a", "c", "d"} and (found.hits, found.misses) == (1, 3)
    assert db.batches == [["c", "d", "ghost"]]
    again = run(snapshot.lookup(["c", "d", "ghost"]))  # c, d are kept; ghost is known to be absent
    assert set(again.value) == {"c", "d"} and again.misses == 0
    assert db.batches == [["c", "d", "ghost"]]


def test_database_down_at_start_leaves_enrichment_empty_until_a_refresh_succeeds():
    db = FakeCatalog(CATALOGUE, down=True)
    refreshed = []
    snapshot = CatalogSnapshot(db.load_all, db.load_some, refresh_s=60, on_refresh=refreshed.append)
    assert not run(snapshot.refresh())
    assert not snapshot.loaded and len(snapshot) == 0
    found = run(snapshot.lookup(["a"]))  # the fallback lookup fails too: no enrichment, no error
    assert found.value == {} and found.misses == 1
    db.down = False
    assert run(snapshot.refresh()) and snapshot.loaded
    assert run(snapshot.lookup(["a"])).value == {"a": CATALOGUE["a"]}
    assert refreshed == [2]


def test_a_failed_refresh_keeps_the_previous_snapshot():
    db = FakeCatalog(CATALOGUE)
    snapshot = CatalogSnapshot(db.load_all, db.load_some, refresh_s=60)
    run(snapshot.refresh())
    db.down = True
    assert not run(snapshot.refresh())
    assert run(snapshot.lookup(["a", "b"])).hits == 2


def test_background_refresh_retries_until_it_succeeds_then_follows_the_interval():
    db = FakeCatalog(CATALOGUE, down=True)
    snapshot = CatalogSnapshot(db.load_all, db.load_some, refresh_s=0.2, retry_s=0.02)

    async def scenario():
        assert not await snapshot.refresh()
        snapshot.start()
        await asyncio.sleep(0.1)
        assert not snapshot.loaded
        db.down = False
        await asyncio.sleep(0.1)  # a retry (every 0.02 s) picks it up
        assert snapshot.loaded and db.full_loads == 1
        db.items["c"] = ItemMeta("C", None, None)
        await asyncio.sleep(0.35)  # the next full refresh, 0.2 s later
        snapshot.stop()

    run(scenario())
    assert db.full_loads >= 2 and "c" in run(snapshot.lookup(["c"])).value


def test_snapshot_of_the_items_table(db):
    """Against PostgreSQL: one full read at refresh, one batched read for items added since."""
    from stores.event_store import EventStore

    with db.cursor() as cur:
        cur.execute("INSERT INTO items (item_id, title, provider, category) VALUES ('a', 'A', 'p1', 'c1'), ('b', 'B', NULL, NULL)")
    snapshot = CatalogSnapshot.from_store(EventStore(db), refresh_s=60)
    assert run(snapshot.refresh()) and len(snapshot) == 2
    with db.cursor() as cur:
        cur.execute("INSERT INTO items (item_id, title, provider, category) VALUES ('c', 'C', 'p3', 'c3')")
    found = run(snapshot.lookup(["a", "b", "c"]))
    assert found.value == {"a": ItemMeta("A", "p1", "c1"), "b": ItemMeta("B", None, None), "c": ItemMeta("C", "p3", "c3")}
    assert (found.hits, found.misses) == (2, 1)


# -- the result-cache key ---------------------------------------------------------------------------


def test_result_variant_covers_what_shapes_the_answer():
    versions = {"popularity": "v1"}
    base = RecommendRequest(user_id="u", k=10)

    def key(**fields):
        return result_variant(RecommendRequest(**{"user_id": "u", "k": 10, **fields}), versions)

    assert key() == result_variant(base, versions)
    assert key(user_id="someone-else") == key()  # the user is the cache's outer key
    assert key(context={"time": "2026-01-01T12:00:00Z"}) == key()
    different = [
        key(k=5),
        key(offset=10),
        key(filters={"category": "c"}),
        key(filters={"provider": "p"}),
        key(filters={"exclude_seen": False}),
        key(context={"device": "ios"}),
        key(session_items=["a"]),
        key(exclude_ids=["a"]),
        key(strategy="fusion"),
        result_variant(base, {"popularity": "v2"}),
    ]
    assert len({key(), *different}) == len(different) + 1
