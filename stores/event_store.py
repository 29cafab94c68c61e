"""The event log and catalogue in PostgreSQL: bulk loads, idempotent inserts, and the reads models need."""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import pandas as pd
import psycopg2
from psycopg2.extras import execute_values
from tqdm import tqdm

from stores.frames import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS, Dataset, PresetSplit
from stores.migrations import migrate
from stores.postgres import Database

log = logging.getLogger(__name__)

COPY_CHUNK_ROWS = 100_000


class EventRow(NamedTuple):
    """One event to insert, in EVENT_COLUMNS order."""

    user_id: str | None
    item_id: str
    session_id: str | None
    event_type: str
    value: float | None
    device: str | None
    ts: datetime
    idempotency_key: str | None


class StoredEventRow(NamedTuple):
    """One stored event: its event_id and the EventRow fields a model reads."""

    event_id: int
    user_id: str | None
    item_id: str
    session_id: str | None
    event_type: str
    value: float | None
    device: str | None
    ts: datetime


STORED_EVENT_COLUMNS = ", ".join(StoredEventRow._fields)


class SessionEnd(NamedTuple):
    """A session ended explicitly: events of `session_key` at or before `ended_at` no longer count."""

    end_id: int
    session_key: str  # user_id, or "session:<session_id>" (graph_builders.edge_weights.interaction_key)
    ended_at: datetime


@dataclass(frozen=True)
class InsertResult:
    event_id: int
    duplicate: bool  # the idempotency_key was seen before; nothing new was stored


@dataclass(frozen=True)
class LoadSummary:
    dataset: str
    namespace: str
    events: int
    items: int
    users: int
    sessions: int
    first_event: str | None
    last_event: str | None
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else math.inf


class LoadError(RuntimeError):
    """A bulk load failed; the transaction was rolled back and nothing was written."""


def _pg_array(values: Any) -> str | None:
    if values is None or (isinstance(values, float) and math.isnan(values)):
        return "{}"
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{v}"' for v in escaped) + "}"


def _copy_csv(frame: pd.DataFrame) -> io.StringIO:
    """CSV in the shape COPY ... (FORMAT csv) reads: empty unquoted field = NULL."""
    out = frame.copy()
    for column in out.columns:
        if column == "badges":
            out[column] = out[column].map(_pg_array)
        elif column == "attrs":
            out[column] = out[column].map(lambda a: json.dumps(a or {}))
        elif column in ("ts", "created_at"):
            out[column] = pd.to_datetime(out[column], utc=True).map(lambda t: t.isoformat() if pd.notna(t) else None)
    buffer = io.StringIO()
    out.to_csv(buffer, index=False, header=False, na_rep="")
    buffer.seek(0)
    return buffer


def _read_copy(cur, query: str, columns: list[str], params: Sequence[Any] = ()) -> pd.DataFrame:
    """Stream a SELECT out with COPY TO (much faster than row fetches at a million rows)."""
    buffer = io.StringIO()
    cur.copy_expert(f"COPY ({cur.mogrify(query, params).decode()}) TO STDOUT WITH (FORMAT csv)", buffer)
    buffer.seek(0)
    if buffer.getvalue() == "":
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return pd.read_csv(buffer, names=columns, header=None, dtype=object, keep_default_na=False, na_values=[""])


class EventStore:
    """Everything the rest of recserve reads from or writes to PostgreSQL goes through here."""

    def __init__(self, db: Database):
        self.db = db

    # -- schema --------------------------------------------------------------------------------
    def migrate(self):
        return migrate(self.db)

    # -- bulk loads ----------------------------------------------------------------------------
    def load_dataset(self, dataset: Dataset, replace: bool = False, progress: bool = True) -> LoadSummary:
        """COPY a dataset in ONE transaction: any bad row rolls back everything."""
        started = time.perf_counter()
        self.migrate()
        try:
            with self.db.connection() as conn, conn.cursor() as cur:
                if replace:
                    # Session ends go too: they would end sessions of the new events.
                    cur.execute("TRUNCATE events, items, users, dataset_meta, session_ends RESTART IDENTITY")
                else:
                    cur.execute("SELECT EXISTS (SELECT 1 FROM events)")
                    if cur.fetchone()[0]:
                        raise LoadError(
                            f"namespace {self.db.namespace!r} already holds events; load with replace=True "
                            "(CLI: --replace) or into another namespace (--namespace)"
                        )
                self._upsert_copy(cur, "items", dataset.items[ITEM_COLUMNS], "item_id")
                self._upsert_copy(cur, "users", dataset.users[USER_COLUMNS], "user_id")
                self._copy_events(cur, dataset.events[EVENT_COLUMNS], dataset.name, progress)
                self._set_meta(cur, "dataset", {"name": dataset.name, "source": dataset.source})
                if dataset.preset_split is not None:
                    self._set_meta(cur, "preset_split", _split_to_json(dataset.preset_split))
        except psycopg2.Error as error:
            raise LoadError(f"loading {dataset.name} ({dataset.source}) failed, nothing was written: {error}") from error
        summary = dataset.summary()
        return LoadSummary(
            dataset=dataset.name,
            namespace=self.db.namespace,
            events=summary["events"],
            items=summary["items"],
            users=summary["users"],
            sessions=summary["sessions"],
            first_event=summary["first_event"],
            last_event=summary["last_event"],
            seconds=time.perf_counter() - started,
        )

    def _copy_events(self, cur, events: pd.DataFrame, name: str, progress: bool) -> None:
        columns = ", ".join(EVENT_COLUMNS)
        with tqdm(total=len(events), desc=f"COPY {name} events", unit="ev", disable=not progress) as bar:
            for start in range(0, len(events), COPY_CHUNK_ROWS):
                chunk = events.iloc[start : start + COPY_CHUNK_ROWS]
                cur.copy_expert(f"COPY events ({columns}) FROM STDIN WITH (FORMAT csv)", _copy_csv(chunk))
                bar.update(len(chunk))

    def _upsert_copy(self, cur, table: str, frame: pd.DataFrame, key: str) -> None:
        """COPY into a staging table, then upsert: a catalogue can be re-sent with updates."""
        if frame.empty:
            return
        columns = list(frame.columns)
        column_list = ", ".join(columns)
        cur.execute(f"CREATE TEMP TABLE staging_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP")
        cur.copy_expert(f"COPY staging_{table} ({column_list}) FROM STDIN WITH (FORMAT csv)", _copy_csv(frame))
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
        cur.execute(
            f"INSERT INTO {table} ({column_list}) SELECT {column_list} FROM staging_{table} "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
        )

    # -- live writes ---------------------------------------------------------------------------
    def insert_events(self, rows: Sequence[EventRow]) -> list[InsertResult]:
        """Insert events idempotently, all or nothing. A repeated idempotency_key stores nothing new
        and returns the event_id stored the first time."""
        if not rows:
            return []
        with self.db.cursor() as cur:
            inserted = execute_values(
                cur,
                f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES %s "
                "ON CONFLICT (idempotency_key) DO NOTHING RETURNING event_id, idempotency_key",
                [tuple(r) for r in rows],
                fetch=True,
            )
            new_by_key = {key: event_id for event_id, key in inserted if key is not None}
            new_anonymous = iter(event_id for event_id, key in inserted if key is None)
            keys = [r.idempotency_key for r in rows if r.idempotency_key is not None]
            existing: dict[str, int] = {}
            missing = [k for k in keys if k not in new_by_key]
            if missing:
                cur.execute("SELECT idempotency_key, event_id FROM events WHERE idempotency_key = ANY(%s)", (missing,))
                existing = dict(cur.fetchall())
        results, claimed = [], set()
        for row in rows:
            key = row.idempotency_key
            if key is None:
                results.append(InsertResult(next(new_anonymous), duplicate=False))
            elif key in new_by_key and key not in claimed:
                claimed.add(key)  # the same key twice in one batch: the second is a duplicate
                results.append(InsertResult(new_by_key[key], duplicate=False))
            else:
                results.append(InsertResult(existing.get(key) or new_by_key[key], duplicate=True))
        return results

    def end_session(self, session_key: str) -> SessionEnd:
        """Record that a session ended now (the database's clock, shared by every replica)."""
        with self.db.cursor() as cur:
            cur.execute(
                "INSERT INTO session_ends (session_key) VALUES (%s) RETURNING end_id, session_key, ended_at",
                (session_key,),
            )
            return SessionEnd(*cur.fetchone())

    # -- reads ---------------------------------------------------------------------------------
    def events_frame(
        self, start: datetime | None = None, end: datetime | None = None, through_event_id: int | None = None
    ) -> pd.DataFrame:
        """Events with start <= ts < end (and event_id <= through_event_id), in time order (ties by
        event_id), as an EVENT_COLUMNS frame."""
        where, params = [], []
        if through_event_id is not None:
            where.append("event_id <= %s")
            params.append(through_event_id)
        if start is not None:
            where.append("ts >= %s")
            params.append(start)
        if end is not None:
            where.append("ts < %s")
            params.append(end)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self.db.cursor() as cur:
            frame = _read_copy(
                cur, f"SELECT {', '.join(EVENT_COLUMNS)} FROM events {clause} ORDER BY ts, event_id", EVENT_COLUMNS, params
            )
        frame["value"] = pd.to_numeric(frame["value"]).astype("float64")
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
        return _nones(frame)

    def items_frame(self) -> pd.DataFrame:
        with self.db.cursor() as cur:
            frame = _read_copy(
                cur,
                "SELECT item_id, title, description, provider, category, array_to_json(badges), attrs, created_at "
                "FROM items ORDER BY item_id",
                ITEM_COLUMNS,
            )
        frame["badges"] = frame["badges"].map(lambda s: json.loads(s) if isinstance(s, str) else [])
        frame["attrs"] = frame["attrs"].map(lambda s: json.loads(s) if isinstance(s, str) else {})
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
        return _nones(frame)

    def catalog_entries(self) -> list[tuple[str, str | None, str | None, str | None]]:
        """(item_id, title, provider, category) of every item, in one COPY: the serving snapshot."""
        columns = ["item_id", "title", "provider", "category"]
        with self.db.cursor() as cur:
            frame = _read_copy(cur, f"SELECT {', '.join(columns)} FROM items", columns)
        return list(_nones(frame).itertuples(index=False, name=None))

    def users_frame(self) -> pd.DataFrame:
        with self.db.cursor() as cur:
            frame = _read_copy(cur, "SELECT user_id, device, attrs, created_at FROM users ORDER BY user_id", USER_COLUMNS)
        frame["attrs"] = frame["attrs"].map(lambda s: json.loads(s) if isinstance(s, str) else {})
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
        return _nones(frame)

    def seen_items(self, user_id: str, limit: int = 5000) -> list[str]:
        """The items a user interacted with, newest first (for exclude-seen)."""
        with self.db.read_cursor() as cur:
            cur.execute(
                "SELECT item_id FROM events WHERE user_id = %s GROUP BY item_id ORDER BY max(ts) DESC LIMIT %s",
                (user_id, limit),
            )
            return [r[0] for r in cur.fetchall()]

    def count_idempotency_keys(self, keys: Sequence[str]) -> int:
        """How many of `keys` are stored (drills compare it with what the API acknowledged)."""
        with self.db.cursor() as cur:
            cur.execute("SELECT count(*) FROM events WHERE idempotency_key = ANY(%s)", (list(keys),))
            return int(cur.fetchone()[0])

    def most_active_users(self, limit: int = 1000) -> list[str]:
        """Users with the most events first (load tests draw their returning users from these)."""
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT user_id FROM events WHERE user_id IS NOT NULL GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT %s",
                (limit,),
            )
            return [r[0] for r in cur.fetchall()]

    def items_by_id(self, item_ids: Iterable[str]) -> dict[str, dict]:
        ids = list(item_ids)
        with self.db.read_cursor() as cur:
            cur.execute(
                "SELECT item_id, title, provider, category, badges FROM items WHERE item_id = ANY(%s)", (ids,)
            )
            return {r[0]: {"title": r[1], "provider": r[2], "category": r[3], "badges": r[4]} for r in cur.fetchall()}

    def events_after(self, event_id: int, also: Sequence[int] = (), limit: int = 10_000) -> list[StoredEventRow]:
        """Events with an id above `event_id`, or in `also`, by event_id: a live follower's next batch.

        `also` names ids the caller still waits on: a bigserial id is taken at insert, so a lower id
        can commit after a higher one was already read.
        """
        with self.db.read_cursor() as cur:
            # Two index range scans: an OR of both conditions makes PostgreSQL scan the whole index.
            cur.execute(
                f"SELECT * FROM ((SELECT {STORED_EVENT_COLUMNS} FROM events WHERE event_id > %s "
                "ORDER BY event_id LIMIT %s) UNION ALL "
                f"(SELECT {STORED_EVENT_COLUMNS} FROM events WHERE event_id = ANY(%s::bigint[]) AND event_id <= %s)) "
                "AS found ORDER BY event_id",
                (event_id, limit, list(also), event_id),
            )
            return [StoredEventRow(*r) for r in cur.fetchall()]

    def recent_events(self, since: datetime) -> list[StoredEventRow]:
        """Events with ts >= since, by event_id (e.g. the last session timeout's worth, at start)."""
        with self.db.cursor() as cur:
            cur.execute(f"SELECT {STORED_EVENT_COLUMNS} FROM events WHERE ts >= %s ORDER BY event_id", (since,))
            return [StoredEventRow(*r) for r in cur.fetchall()]

    def max_event_id(self) -> int:
        """The highest stored event_id; 0 when there are no events."""
        with self.db.cursor() as cur:
            cur.execute("SELECT coalesce(max(event_id), 0) FROM events")
            return cur.fetchone()[0]

    def session_ends_after(self, end_id: int) -> list[SessionEnd]:
        with self.db.read_cursor() as cur:
            cur.execute(
                "SELECT end_id, session_key, ended_at FROM session_ends WHERE end_id > %s ORDER BY end_id", (end_id,)
            )
            return [SessionEnd(*r) for r in cur.fetchall()]

    def session_ends_since(self, since: datetime) -> list[SessionEnd]:
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT end_id, session_key, ended_at FROM session_ends WHERE ended_at >= %s ORDER BY end_id",
                (since,),
            )
            return [SessionEnd(*r) for r in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM items), (SELECT count(*) FROM users)"
            )
            events, items, users = cur.fetchone()
        return {"events": events, "items": items, "users": users}

    def time_range(self) -> tuple[datetime | None, datetime | None]:
        with self.db.cursor() as cur:
            cur.execute("SELECT min(ts), max(ts) FROM events")
            return cur.fetchone()

    # -- dataset metadata ----------------------------------------------------------------------
    def preset_split(self) -> PresetSplit | None:
        value = self.get_meta("preset_split")
        return _split_from_json(value) if value else None

    def get_meta(self, key: str) -> Any:
        with self.db.cursor() as cur:
            cur.execute("SELECT value FROM dataset_meta WHERE key = %s", (key,))
            row = cur.fetchone()
        return row[0] if row else None

    @staticmethod
    def _set_meta(cur, key: str, value: Any) -> None:
        cur.execute(
            "INSERT INTO dataset_meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            (key, json.dumps(value)),
        )


def _nones(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing text as None (the frames contract), not NaN."""
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def _split_to_json(split: PresetSplit) -> dict:
    return {"test_from": split.test_from.isoformat(), "description": split.description}


def _split_from_json(value: dict) -> PresetSplit:
    return PresetSplit(test_from=datetime.fromisoformat(value["test_from"]), description=value["description"])
