"""Session tracking (models/sessions.py): timeouts, explicit ends, the item window, late events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from graph_builders.edge_weights import interaction_key
from models.sessions import SessionState, SessionTracker, session_key, split_key

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def item_ids(tracker: SessionTracker, key: str, now: datetime) -> list[str]:
    return [item.item_id for item in tracker.recent_items(key, now)]


def test_keys_for_users_and_anonymous_visitors():
    assert session_key("u1", "s1") == "u1"
    assert session_key(None, "s1") == "session:s1"
    events = pd.DataFrame({"user_id": ["u1", None], "session_id": ["s1", "s1"]})
    assert interaction_key(events).tolist() == ["u1", "session:s1"]  # the key the models are trained on
    assert split_key("session:s1") == (None, "s1") and split_key("u1") == ("u1", None)
    with pytest.raises(ValueError):
        session_key(None, None)
    tracker = SessionTracker()
    tracker.observe("session:s1", "i1", at(0))
    state = tracker.state("session:s1", at(1))
    assert (state.user_id, state.session_id, state.active) == (None, "s1", True)


def test_a_session_ends_after_the_timeout_without_activity():
    tracker = SessionTracker(timeout_s=1800)
    tracker.observe("u1", "i1", at(0))
    tracker.observe("u1", "i2", at(10))
    state = tracker.state("u1", at(40))
    assert state.active and [i.item_id for i in state.items] == ["i1", "i2"]
    assert (state.started_at, state.last_activity_at, state.expires_at) == (at(0), at(10), at(40))
    assert state.duration_s == 600.0 and state.events == 2
    assert tracker.active("u1", at(40)) and not tracker.active("u1", at(40.01))
    assert tracker.state("u1", at(41)) == SessionState(key="u1", user_id="u1", active=False)
    tracker.observe("u1", "i3", at(45))  # more than the timeout after the last activity: a new session
    state = tracker.state("u1", at(46))
    assert [i.item_id for i in state.items] == ["i3"] and state.started_at == at(45) and state.events == 1
    assert not tracker.active("nobody", at(0))


def test_set_timeout_applies_to_existing_sessions():
    tracker = SessionTracker(timeout_s=1800)
    tracker.observe("u1", "i1", at(0))
    tracker.set_timeout(300)
    assert tracker.timeout_s == 300
    assert tracker.active("u1", at(5)) and not tracker.active("u1", at(6))
    with pytest.raises(ValueError):
        tracker.set_timeout(0)


def test_explicit_end_and_a_new_session_after_it():
    tracker = SessionTracker()
    tracker.observe("u1", "i1", at(0))
    tracker.observe("u1", "i2", at(1))
    tracker.end("u1", at(2))
    assert not tracker.active("u1", at(2)) and tracker.recent_items("u1", at(2)) == []
    assert not tracker.observe("u1", "late", at(1.5))  # ts before the end: it no longer counts
    assert not tracker.active("u1", at(3))
    assert tracker.observe("u1", "i3", at(3))
    state = tracker.state("u1", at(3))
    assert [i.item_id for i in state.items] == ["i3"] and state.started_at == at(3) and state.events == 1
    tracker.end("u1", at(2.5))  # an older end arriving late changes nothing
    assert item_ids(tracker, "u1", at(3)) == ["i3"]


def test_an_end_seen_after_later_events_keeps_those_as_a_new_session():
    tracker = SessionTracker()
    for minute, item in [(0, "i1"), (1, "i2"), (3, "i3"), (4, "i4")]:
        tracker.observe("u1", item, at(minute))
    tracker.end("u1", at(2))
    state = tracker.state("u1", at(5))
    assert [i.item_id for i in state.items] == ["i3", "i4"]
    assert (state.started_at, state.events) == (at(3), 2)
    tracker.end("u1", at(10))  # ends before their events arrive exclude them just the same
    assert not tracker.observe("u1", "i5", at(9))


def test_only_the_last_items_are_held():
    tracker = SessionTracker(max_items=10)
    for n in range(15):
        tracker.observe("u1", f"i{n}", at(n))
    state = tracker.state("u1", at(15))
    assert [i.item_id for i in state.items] == [f"i{n}" for n in range(5, 15)]
    assert state.events == 15 and state.started_at == at(0) and state.duration_s == 14 * 60
    tracker.observe("u1", "late", at(0.5))  # older than every held item: counted, not held
    state = tracker.state("u1", at(15))
    assert state.items[0].item_id == "i5" and state.events == 16


def test_late_events_keep_time_order_and_do_not_move_activity_back():
    tracker = SessionTracker()
    tracker.observe("u1", "i1", at(0))
    tracker.observe("u1", "i3", at(10))
    tracker.observe("u1", "i2", at(5))  # arrives late
    state = tracker.state("u1", at(11))
    assert [i.item_id for i in state.items] == ["i1", "i2", "i3"]
    assert state.last_activity_at == at(10)
    tracker.observe("u1", "i0", at(-20))  # before the start, within the timeout: the session started earlier
    state = tracker.state("u1", at(11))
    assert state.items[0].item_id == "i0" and state.started_at == at(-20) and state.duration_s == 30 * 60
    # More than the timeout before the start: an older session's event.
    assert not tracker.observe("u1", "old", at(-51))
    assert tracker.state("u1", at(11)).events == 4


def test_events_with_the_same_ts_keep_their_arrival_order():
    tracker = SessionTracker()
    tracker.observe("u1", "a", at(1))
    tracker.observe("u1", "b", at(1))
    tracker.observe("u1", "first", at(0))
    tracker.observe("u1", "a", at(1))  # a second event on the same item at the same time is an event too
    assert item_ids(tracker, "u1", at(1)) == ["first", "a", "b", "a"]
    state = tracker.state("u1", at(1))
    assert state.events == 4 and state.duration_s == 60.0


def test_prune_drops_idle_sessions_and_old_ends():
    tracker = SessionTracker(timeout_s=1800)
    tracker.observe("idle", "i1", at(0))
    tracker.observe("live", "i1", at(20))
    tracker.end("gone", at(0))
    assert tracker.prune(at(30)) == 0 and len(tracker) == 2
    assert tracker.prune(at(31)) == 1 and len(tracker) == 1
    assert tracker.active("live", at(31)) and not tracker.active("idle", at(31))
    assert "gone" not in tracker._ended  # older than the timeout: nothing it excludes could be active
    tracker.observe("idle", "i2", at(32))
    assert item_ids(tracker, "idle", at(32)) == ["i2"]
