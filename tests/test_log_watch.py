"""LogWatch against the real PostgreSQL: its generation grows with each statement that adds events or
session ends in its namespace, not with another namespace's, and a lost connection is noticed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg2

from stores.event_store import EventRow, EventStore
from stores.log_watch import LogWatch

ROW = EventRow("u1", "i1", None, "click", None, None, datetime(2026, 1, 2, tzinfo=UTC), None)


async def grows(watch: LogWatch, before: int, wait_s: float = 2.0) -> bool:
    """Whether the generation moves past `before` within `wait_s` (the event loop drains the socket meanwhile)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while watch.generation == before and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return watch.generation != before


def test_generation_counts_this_namespace_s_additions(db, dsn, other_db):
    store, other = EventStore(db), EventStore(other_db)

    async def scenario() -> None:
        watch = LogWatch(dsn, db.namespace)
        watch.listen_soon()  # in the background: a request does not wait for the connection
        assert not watch.listening
        await asyncio.wait_for(watch._trying, 5)
        assert watch.listening and watch.generation == 1  # listening anew: anything may have been missed
        await asyncio.to_thread(other.insert_events, [ROW])
        assert not await grows(watch, 1, wait_s=0.3)
        await asyncio.to_thread(store.insert_events, [ROW, ROW._replace(item_id="i2")])
        assert await grows(watch, 1)
        before = watch.generation
        await asyncio.to_thread(store.end_session, "u1")
        assert await grows(watch, before)
        watch.close()
        assert not watch.listening

    asyncio.run(scenario())


def test_a_lost_connection_stops_listening_until_it_listens_again(db, dsn):
    async def scenario() -> None:
        watch = LogWatch(dsn, db.namespace)
        await watch.listen()
        backend = watch._conn.get_backend_pid()
        with psycopg2.connect(dsn) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (backend,))
        deadline = asyncio.get_running_loop().time() + 2
        while watch.listening and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert not watch.listening  # so the follower reads before every answer
        await watch.listen()
        assert watch.listening and watch.generation == 2
        watch.close()

    asyncio.run(scenario())


def test_a_namespace_without_the_trigger_is_not_listened_to(dsn, other_db):
    with other_db.cursor() as cur:
        cur.execute("DROP TRIGGER events_notify_log ON events")
    watch = LogWatch(dsn, other_db.namespace)
    asyncio.run(watch.listen())
    assert not watch.listening  # its follower reads before every answer, as before migration 0003


def test_an_unreachable_database_is_retried_after_retry_s():
    now = [0.0]
    watch = LogWatch("postgresql://postgres@127.0.0.1:1/none", "demo", retry_s=5.0, timer=lambda: now[0])

    async def scenario() -> None:
        await watch.listen()
        assert not watch.listening and watch._retry_at == 5.0
        now[0] = 4.0
        await watch.listen()  # too soon: no new attempt
        assert watch._retry_at == 5.0
        now[0] = 6.0
        await watch.listen()
        assert not watch.listening and watch._retry_at == 11.0

    asyncio.run(scenario())
