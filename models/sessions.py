"""Live sessions: what a user (or an anonymous visitor) did in the current visit.

A session is keyed by `session_key`: the user_id, or "session:<session_id>" for an anonymous
visitor (the same key as graph_builders.edge_weights.interaction_key). It ends after `timeout_s`
without activity, or when ended explicitly; it holds its last `max_items` items, oldest first.

Sessions follow the events' own times, not the clock of whoever calls, so replicas that apply the
same events and ends reach the same state, and mostly even when they see them in another order:

- an event that arrives late (ts before the session's last activity) is filed by its ts and does
  not move the last activity back;
- an event more than the timeout before the session's start belongs to an older session: ignored;
- `end(key, at)`: events with ts <= at stop counting, before or after the end was seen; an event
  after `at` starts a new session.

Only one session per key is held, so order still matters in rare cases: a late event that would
have joined an earlier session to the current one finds the earlier one gone, and an end seen after
more than `max_items` events later than it cannot recount them (that session's `started_at` and
`events` then cover its held items). Apply the log in one order everywhere, ends before events.

No Ray, no database: the TGN deployment feeds it. Not thread-safe (one event loop owns it). Sessions
idle past the timeout stay until `prune` drops them, so call it now and then.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

# graph_builders.edge_weights.SESSION_PREFIX, spelled out: importing graph_builders loads torch and
# PyG, which the ingress (it imports SessionState for its API) has no other use for.
SESSION_PREFIX = "session:"
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_MAX_ITEMS = 10


def session_key(user_id: str | None, session_id: str | None) -> str:
    """The user_id, or "session:<session_id>" for an anonymous visitor."""
    if user_id is not None:
        return user_id
    if session_id is None:
        raise ValueError("a session needs a user_id or a session_id")
    return SESSION_PREFIX + session_id


def split_key(key: str) -> tuple[str | None, str | None]:
    """(user_id, session_id) of a session key; one of them is None."""
    if key.startswith(SESSION_PREFIX):
        return None, key.removeprefix(SESSION_PREFIX)
    return key, None


class SessionItem(BaseModel):
    item_id: str
    ts: datetime


class SessionState(BaseModel):
    key: str = Field(description='user_id, or "session:<session_id>" for an anonymous visitor')
    user_id: str | None = None
    session_id: str | None = Field(default=None, description="set for an anonymous visitor's session")
    active: bool = False
    items: list[SessionItem] = Field(default_factory=list, description="the session's last items, oldest first")
    started_at: datetime | None = None
    last_activity_at: datetime | None = None
    duration_s: float = Field(default=0.0, description="last_activity_at - started_at")
    expires_at: datetime | None = Field(default=None, description="when it ends unless there is more activity")
    events: int = Field(default=0, description="events in the session (all of them, not only the items held)")


@dataclass
class _Session:
    started_at: datetime
    last_activity_at: datetime
    items: list[SessionItem] = field(default_factory=list)  # by ts; ties in arrival order
    events: int = 0


class SessionTracker:
    """Sessions per key, from observed events and explicit ends. Times must be tz-aware."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, max_items: int = DEFAULT_MAX_ITEMS):
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self.set_timeout(timeout_s)
        self._sessions: dict[str, _Session] = {}
        self._ended: dict[str, datetime] = {}  # key -> its latest explicit end

    def __len__(self) -> int:
        return len(self._sessions)

    def set_timeout(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.timeout_s = timeout_s
        self.timeout = timedelta(seconds=timeout_s)

    def observe(self, key: str, item_id: str, ts: datetime) -> bool:
        """Add one event (the caller drops repeats of an event); returns whether it counts."""
        ended = self._ended.get(key)
        if ended is not None and ts <= ended:
            return False
        session = self._sessions.get(key)
        if session is None or ts - session.last_activity_at > self.timeout:
            self._sessions[key] = _Session(ts, ts, [SessionItem(item_id=item_id, ts=ts)], events=1)
            return True
        if session.started_at - ts > self.timeout:
            return False
        insort(session.items, SessionItem(item_id=item_id, ts=ts), key=lambda item: item.ts)
        del session.items[: -self.max_items]
        session.started_at = min(session.started_at, ts)
        session.last_activity_at = max(session.last_activity_at, ts)
        session.events += 1
        return True

    def end(self, key: str, at: datetime) -> None:
        """End the key's session at `at`: its events up to then stop counting."""
        if key in self._ended and self._ended[key] >= at:
            return  # a later end already covers this one
        self._ended[key] = at
        session = self._sessions.get(key)
        if session is None or session.started_at > at:
            return
        if session.last_activity_at <= at:
            del self._sessions[key]
            return
        # The end was seen after events that followed it: those are a new session. Only the items
        # held are known, so its start and event count are theirs (see the module docstring).
        after = [item for item in session.items if item.ts > at]  # never empty: the newest item is held
        self._sessions[key] = _Session(after[0].ts, session.last_activity_at, after, events=len(after))

    def state(self, key: str, now: datetime) -> SessionState:
        user_id, session_id = split_key(key)
        session = self._sessions.get(key)
        if session is None or now - session.last_activity_at > self.timeout:
            return SessionState(key=key, user_id=user_id, session_id=session_id, active=False)
        return SessionState(
            key=key,
            user_id=user_id,
            session_id=session_id,
            active=True,
            items=list(session.items),
            started_at=session.started_at,
            last_activity_at=session.last_activity_at,
            duration_s=(session.last_activity_at - session.started_at).total_seconds(),
            expires_at=session.last_activity_at + self.timeout,
            events=session.events,
        )

    def active(self, key: str, now: datetime) -> bool:
        session = self._sessions.get(key)
        return session is not None and now - session.last_activity_at <= self.timeout

    def recent_items(self, key: str, now: datetime) -> list[SessionItem]:
        """The active session's items, oldest first; none when the key has no active session."""
        return self.state(key, now).items

    def prune(self, now: datetime) -> int:
        """Drop sessions idle for more than the timeout; returns how many were dropped."""
        idle = [key for key, session in self._sessions.items() if now - session.last_activity_at > self.timeout]
        for key in idle:
            del self._sessions[key]
        # An end older than the timeout can only matter to a live session of its key (a very late
        # event could otherwise reach back across it); anything else it would exclude is idle anyway.
        for key in [k for k, at in self._ended.items() if now - at > self.timeout and k not in self._sessions]:
            del self._ended[key]
        return len(idle)
