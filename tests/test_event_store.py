from datetime import UTC, datetime, timedelta

import pandas as pd
import psycopg2
import pytest

from stores.event_store import EventRow, EventStore, LoadError, SessionEnd, StoredEventRow
from stores.frames import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS, Dataset, PresetSplit
from stores.migrations import discover, migrate
from stores.postgres import Database

NOW = pd.Timestamp("2026-01-01T12:00:00Z")


def tiny_dataset(event_type_of_last: str = "click") -> Dataset:
    events = pd.DataFrame(
        [
            ["u1", "i1", "s1", "click", float("nan"), "ios", NOW, None],
            ["u1", "i2", "s1", "rating", 4.0, "ios", NOW + pd.Timedelta("1min"), None],
            [None, "i2", "anon", event_type_of_last, 30.0, None, NOW + pd.Timedelta("2min"), None],
        ],
        columns=EVENT_COLUMNS,
    )
    items = pd.DataFrame(
        [
            ["i1", 'Title, with "quotes"', "desc", "Studio A", "strategy", ["co-op", "space, far"], {"price": 9.5}, NOW],
            ["i2", "Two", None, None, None, [], {}, NOW],
        ],
        columns=ITEM_COLUMNS,
    )
    users = pd.DataFrame([["u1", "ios", {"age_band": "25-34"}, NOW]], columns=USER_COLUMNS)
    return Dataset("tiny", events, items, users, PresetSplit(NOW + pd.Timedelta("90s"), "tiny split"), "test")


def test_migrations_apply_once(db):
    with db.cursor() as cur:
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        recorded = [r[0] for r in cur.fetchall()]
    assert recorded == [m.version for m in discover()]
    assert migrate(db) == []  # a second run changes nothing
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM schema_migrations")
        assert cur.fetchone()[0] == len(recorded)


def test_load_round_trips_frames(db):
    store = EventStore(db)
    summary = store.load_dataset(tiny_dataset(), progress=False)
    assert (summary.events, summary.items, summary.users) == (3, 2, 1)
    events = store.events_frame()
    assert list(events.columns) == EVENT_COLUMNS
    assert events["user_id"].tolist() == ["u1", "u1", None]
    assert events["value"].iloc[1] == 4.0 and pd.isna(events["value"].iloc[0])
    item = store.items_frame().set_index("item_id").loc["i1"]
    assert item["title"] == 'Title, with "quotes"'
    assert item["badges"] == ["co-op", "space, far"]
    assert item["attrs"] == {"price": 9.5}
    assert store.users_frame().iloc[0]["attrs"] == {"age_band": "25-34"}
    assert store.preset_split().test_from == NOW + pd.Timedelta("90s")
    window = store.events_frame(start=NOW + pd.Timedelta("30s"), end=NOW + pd.Timedelta("90s"))
    assert window["item_id"].tolist() == ["i2"]


def test_failed_load_writes_nothing(db):
    store = EventStore(db)
    with pytest.raises(LoadError, match="nothing was written"):
        store.load_dataset(tiny_dataset(event_type_of_last="teleport"), progress=False)
    assert store.counts() == {"events": 0, "items": 0, "users": 0}


def test_second_load_needs_replace(db):
    store = EventStore(db)
    store.load_dataset(tiny_dataset(), progress=False)
    with pytest.raises(LoadError, match="already holds events"):
        store.load_dataset(tiny_dataset(), progress=False)
    store.load_dataset(tiny_dataset(), replace=True, progress=False)
    assert store.counts()["events"] == 3


def test_duplicate_idempotency_key_stores_one_event(db):
    store = EventStore(db)
    ts = datetime(2026, 1, 2, tzinfo=UTC)
    row = EventRow("u9", "i1", None, "click", None, "web", ts, "key-1")
    first = store.insert_events([row, row])  # the same key twice in one batch
    again = store.insert_events([row._replace(ts=ts + timedelta(seconds=5))])  # a client retry
    assert [r.duplicate for r in first] == [False, True]
    assert again[0].duplicate and again[0].event_id == first[0].event_id
    assert store.counts()["events"] == 1
    without_key = store.insert_events([row._replace(idempotency_key=None)] * 2)
    assert [r.duplicate for r in without_key] == [False, False]
    assert store.counts()["events"] == 3


def test_database_rejects_what_the_api_would(db):
    store = EventStore(db)
    ts = datetime(2026, 1, 2, tzinfo=UTC)
    for bad in (
        EventRow("u", "i", None, "rating", 9.0, None, ts, None),
        EventRow(None, "i", None, "click", None, None, ts, None),
        EventRow("u", "i", None, "bogus", None, None, ts, None),
    ):
        with pytest.raises(Exception):
            store.insert_events([bad])
    assert store.counts()["events"] == 0


def test_seen_items_newest_first(db):
    store = EventStore(db)
    store.load_dataset(tiny_dataset(), progress=False)
    assert store.seen_items("u1") == ["i2", "i1"]
    assert store.items_by_id(["i1", "nope"])["i1"]["provider"] == "Studio A"


def test_read_cursor_runs_outside_a_transaction_and_hands_back_a_transactional_connection(db):
    db = Database(db.dsn, db.namespace, max_connections=1)  # one connection: each block below gets the same one
    with db.read_cursor() as cur:
        cur.execute("SELECT 1")
        # The server reports no open transaction after the statement: nothing to COMMIT afterwards.
        assert cur.connection.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    with pytest.raises(psycopg2.errors.UndefinedTable):
        with db.read_cursor() as cur:
            cur.execute("SELECT * FROM no_such_table")
    # The connection goes back to the pool as `connection` hands it out: not in autocommit.
    with db.connection() as conn:
        assert conn.autocommit is False
    db.close()


def test_events_after_follows_the_log_and_picks_up_late_commits(db):
    store = EventStore(db)
    assert store.max_event_id() == 0 and store.events_after(0) == []
    ts = datetime(2026, 1, 2, tzinfo=UTC)
    rows = [EventRow("u1", f"i{n}", None, "click", None, "web", ts + timedelta(seconds=n), None) for n in range(4)]
    ids = [r.event_id for r in store.insert_events(rows)]
    assert store.max_event_id() == ids[-1]
    after = store.events_after(ids[1])
    assert [e.event_id for e in after] == ids[2:]
    assert after[0] == StoredEventRow(ids[2], "u1", "i2", None, "click", None, "web", ts + timedelta(seconds=2))
    # An id the caller still waits on comes back too, in event_id order, without repeating one above the cursor.
    assert [e.event_id for e in store.events_after(ids[2], also=[ids[0], ids[3]])] == [ids[0], ids[3]]
    assert [e.event_id for e in store.events_after(0, limit=2)] == ids[:2]


def test_recent_events_by_time_in_id_order(db):
    store = EventStore(db)
    ts = datetime(2026, 1, 2, tzinfo=UTC)
    late = EventRow(None, "i1", "s1", "play", 12.5, None, ts, None)  # stored first, happened last
    early = EventRow("u1", "i2", None, "click", None, None, ts - timedelta(hours=1), None)
    older = EventRow("u1", "i3", None, "click", None, None, ts - timedelta(days=1), None)
    ids = [r.event_id for r in store.insert_events([late, early, older])]
    recent = store.recent_events(ts - timedelta(hours=1))
    assert [e.event_id for e in recent] == ids[:2]
    assert (recent[0].session_id, recent[0].value) == ("s1", 12.5)


def test_session_ends_are_recorded_and_read_back(db):
    store = EventStore(db)
    assert store.session_ends_after(0) == []
    first = store.end_session("u1")
    second = store.end_session("session:s9")
    assert isinstance(first, SessionEnd) and first.session_key == "u1" and first.ended_at.tzinfo is not None
    assert second.end_id > first.end_id and second.ended_at >= first.ended_at
    assert store.session_ends_after(0) == [first, second]
    assert store.session_ends_after(first.end_id) == [second]
    assert store.session_ends_since(second.ended_at) == [e for e in (first, second) if e.ended_at >= second.ended_at]
    assert store.session_ends_since(second.ended_at + timedelta(seconds=1)) == []


def test_replace_clears_session_ends(db):
    store = EventStore(db)
    store.load_dataset(tiny_dataset(), progress=False)
    store.end_session("u1")
    store.load_dataset(tiny_dataset(), replace=True, progress=False)
    assert store.session_ends_after(0) == []
