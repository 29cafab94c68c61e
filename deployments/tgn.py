"""TGN on its own deployment: session-aware recommendations from memory that every event updates.

State and replicas. The events table in PostgreSQL is the log every replica follows. A replica starts
from the artifact's state (memory and recent interactions after the training events, up to event id
`applied_through`), rebuilds the sessions of the last `session_timeout_s` from the stored events and
session ends, and then applies every event with a higher id, in id order. Before an answer it reads
what was stored since (`catch_up`), so every replica applies the same events in the same order and a
restarted replica gets back to the same state: no routing by user is needed, and no state is lost.

- `recommend` reads the log only when it has grown since the replica's last read (stores/log_watch.py:
  PostgreSQL notifies the replica of every statement that adds events or session ends) or that read is
  `max_log_staleness_s` old; while the replica cannot listen, every time. A notification reaches the
  replica within a millisecond of the commit, long before the writer's client can ask again.
- `observe(event_ids)`: the ingress calls it after storing events; it catches up and reports whether
  those events are now in memory. `session` and `end_session` catch up too.
- Ids are handed out before commit, so a lower id can become visible after a higher one: ids skipped
  over are re-asked for for `straggler_wait_s` before being given up as rolled back.
- Events are applied in runs in which no node repeats (`node_disjoint_runs`), which is exactly
  event-by-event application, so how a replica's reads happened to be cut does not change its memory.
- Duplicates are stored once (idempotency keys), so they reach memory once. Events older than a
  node's last update are applied at that time (see `TGNRecommender.observe`).
- A known user or tracked anonymous session is answered only while its session is active; other
  requests get an empty list, so the cascade moves on. An anonymous request with `session_items` is
  answered from the items the model knows. Fusion asks with `session_only=False`: a known user out of
  session is then answered from memory too, with a reason that says so (TGN_HISTORY_REASON), and the
  fusion ranker weighs the answer by whether the session is active.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import torch
from pydantic import Field
from ray import serve

from deployments.contract import (
    TGN_HISTORY_REASON,
    TGN_SESSION_ITEMS_REASON,
    TGN_SESSION_REASON,
    ArtifactModel,
    Candidates,
    ModelQuery,
    ModelUserConfig,
)
from deployments.devices import replica_device
from graph_builders.edge_weights import EdgeWeights
from graph_builders.temporal import event_messages
from models.item_index import ItemIndex
from models.ranking import top_k_items
from models.sessions import SessionState, SessionTracker, session_key
from models.tgn import TGNRecommender
from models.tgn_training import TGNConfig
from stores.artifacts import read_json
from stores.event_store import EventStore, SessionEnd, StoredEventRow
from stores.log_watch import LogWatch
from stores.postgres import Database

log = logging.getLogger(__name__)

MODEL = "tgn"
LOG_PAGE = 10_000
END_LOOKBACK = 20


class TGNUserConfig(ModelUserConfig):
    session_timeout_s: float = Field(default=1800.0, gt=0, description="a session ends after this long idle")
    straggler_wait_s: float = Field(default=10.0, ge=0, description="how long a skipped event id is waited for")
    max_log_staleness_s: float = Field(
        default=1.0, gt=0, description="recommend reads the log at least this often without a notification"
    )


def node_disjoint_runs(src: torch.Tensor, dst: torch.Tensor) -> list[tuple[int, int]]:
    """Consecutive [start, end) runs of events in which no node appears twice.

    TGN updates a batch from the memory before it, so a batch in which no node repeats gives exactly
    the memory that applying its events one by one would. Applying in such runs keeps every replica's
    memory the same however its reads of the log happened to be cut.
    """
    runs, start, members = [], 0, set()
    for position, (user, item) in enumerate(zip(src.tolist(), dst.tolist())):
        if user in members or item in members:
            runs.append((start, position))
            start, members = position, set()
        members.update((user, item))
    runs.append((start, src.numel()))
    return runs


def _seconds(ts: datetime) -> int:
    return int(ts.timestamp())


@dataclass
class LiveTGN:
    """A loaded TGN artifact plus everything applied since: node ids, sessions, the log position."""

    model: TGNRecommender
    items: ItemIndex
    nodes: dict[str, int]  # user key -> node id
    weights: EdgeWeights
    applied_through: int  # highest event id applied
    ends_through: int = 0  # highest session-end id applied
    read_generation: int = -1  # the LogWatch generation when the log was last read; -1: never
    read_at: float = float("-inf")  # monotonic time of the last read
    sessions: SessionTracker = field(default_factory=SessionTracker)
    waiting: dict[int, float] = field(default_factory=dict)  # skipped ids -> when first skipped (monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pruned_at: float = 0.0  # monotonic time of the last sweep of ended sessions
    _item_vectors: torch.Tensor | None = None
    click_message: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.click_message = self.messages(["click"], [None])

    def messages(self, event_types: list[str], values: list[float | None]) -> torch.Tensor:
        """[n, MESSAGE_DIM] raw TGN messages, built as training built them (graph_builders.temporal)."""
        frame = pd.DataFrame({"event_type": event_types, "value": pd.array(values, dtype="Float64")})
        return torch.from_numpy(event_messages(frame, self.weights))

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> LiveTGN:
        saved = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        items = ItemIndex.load(folder)
        user_keys = read_json(folder / "users.json")["user_keys"]
        model = TGNConfig.model_validate(saved["config"]).build(len(items), len(user_keys), saved["msg_dim"])
        model.load_weights(saved["weights"])
        model.load_state(state)
        model.eval().to(device)  # inputs built on the CPU follow the model (TGNRecommender moves them)
        nodes = {key: len(items) + i for i, key in enumerate(user_keys)}
        weights = EdgeWeights.model_validate(saved["edge_weights"])
        return cls(model, items, nodes, weights, int(state["applied_through"]))

    # -- following the event log ----------------------------------------------------------------
    def rebuild_sessions(self, store: EventStore, now: datetime) -> None:
        """Sessions from the stored events and ends of the last timeout window (those up to the artifact's
        log position; later ones arrive through `apply`)."""
        since = now - timedelta(seconds=self.sessions.timeout_s)
        self.apply_ends(store.session_ends_since(since))
        for row in store.recent_events(since):
            if row.event_id <= self.applied_through and (row.user_id or row.session_id) is not None:
                self.sessions.observe(session_key(row.user_id, row.session_id), row.item_id, row.ts)

    def apply(self, rows: list[StoredEventRow]) -> None:
        """Apply newly read events, in id order, to memory, history and sessions."""
        fresh = [r for r in rows if r.event_id > self.applied_through or r.event_id in self.waiting]
        if not fresh:
            return
        for row in fresh:
            self.waiting.pop(row.event_id, None)
        top = max(r.event_id for r in fresh)
        seen = {r.event_id for r in fresh}
        now = time.monotonic()
        self.waiting.update({i: now for i in range(self.applied_through + 1, top) if i not in seen})
        self.applied_through = max(self.applied_through, top)

        usable = []
        for row in fresh:
            if row.user_id is None and row.session_id is None:
                continue
            key = session_key(row.user_id, row.session_id)
            self.sessions.observe(key, row.item_id, row.ts)
            if row.item_id in self.items.index:
                usable.append((self._node(key), self.items.index[row.item_id], row))
        if not usable:
            return
        src = torch.tensor([n for n, _, _ in usable])
        dst = torch.tensor([i for _, i, _ in usable])
        t = torch.tensor([_seconds(r.ts) for *_, r in usable])
        msg = self.messages([r.event_type for *_, r in usable], [r.value for *_, r in usable])
        for start, end in node_disjoint_runs(src, dst):
            self.model.observe(src[start:end], dst[start:end], t[start:end], msg[start:end])
        self._item_vectors = None  # item memories moved

    def apply_ends(self, ends: list[SessionEnd]) -> None:
        for end in ends:
            self.sessions.end(end.session_key, end.ended_at)
            self.ends_through = max(self.ends_through, end.end_id)

    def prune_sessions(self, now: datetime, every_s: float = 60.0) -> None:
        """Forget sessions idle past the timeout (at most once a minute), so the tracker stays bounded."""
        if time.monotonic() - self.pruned_at >= every_s:
            self.sessions.prune(now)
            self.pruned_at = time.monotonic()

    def give_up_waiting(self, wait_s: float) -> None:
        cutoff = time.monotonic() - wait_s
        self.waiting = {i: since for i, since in self.waiting.items() if since >= cutoff}

    def _node(self, key: str) -> int:
        node = self.nodes.get(key)
        if node is None:
            node = self.nodes[key] = len(self.items) + len(self.nodes)
            if node >= self.model.num_nodes:
                self.model.grow(2 * self.model.num_nodes)
        return node

    # -- answering ----------------------------------------------------------------------------
    def item_vectors(self) -> torch.Tensor:
        if self._item_vectors is None:
            self._item_vectors = self.model.item_vectors()
        return self._item_vectors

    def query_vector(self, query: ModelQuery, now: datetime, at: datetime) -> tuple[torch.Tensor, str] | None:
        """The query's vector at time `at` (the request's context time, else now) and why; None when the
        model has nothing to go on: no active session at `now` (unless `query.session_only` is false and
        the model knows the user) and no known session items."""
        key = query.session_key
        query_t = torch.tensor([_seconds(at)])
        known_key = key is not None and key in self.nodes
        if known_key and self.sessions.active(key, now):
            return self.model.user_queries(torch.tensor([self.nodes[key]]), query_t), TGN_SESSION_REASON
        known = self.items.indices(query.session_items)
        if query.user_id is None and known:
            # Named items carry no type or time: each counts as a click, now.
            t, msg = query_t.expand(len(known)), self.click_message.expand(len(known), -1)
            return self.model.session_query(torch.tensor(known), t, msg, query_t), TGN_SESSION_ITEMS_REASON
        if known_key and not query.session_only:
            return self.model.user_queries(torch.tensor([self.nodes[key]]), query_t), TGN_HISTORY_REASON
        return None

    @torch.no_grad()
    def rank(self, query: ModelQuery, now: datetime, at: datetime | None = None) -> Candidates:
        found = self.query_vector(query, now, at or now)
        if found is None:
            return Candidates(source=MODEL)
        vector, reason = found
        scores = vector @ self.item_vectors().T
        allowed = self.items.mask(query.filters.category, query.filters.provider)
        values, indices = top_k_items(scores, query.k, [self.items.indices(query.exclude_ids)], allowed)
        return Candidates.from_top_k(MODEL, self.items.item_ids, values[0].tolist(), indices[0].tolist(), reason)


@serve.deployment(user_config={"version": "current"})
class TGNDeployment(ArtifactModel[LiveTGN]):
    model_name = MODEL

    def __init__(self, namespace: str, artifacts_dir: str):
        super().__init__(namespace, artifacts_dir)
        self.store = EventStore(Database.from_settings(namespace=namespace))
        self.log_watch = LogWatch(self.store.db.dsn, namespace)
        self.settings = TGNUserConfig()

    def load_artifact(self, folder: Path) -> LiveTGN:
        live = LiveTGN.load(folder, device=replica_device())
        live.sessions.set_timeout(self.settings.session_timeout_s)
        live.rebuild_sessions(self.store, datetime.now(UTC))
        rows, ends = self._read_log(live)
        live.apply(rows)
        live.apply_ends(ends)
        log.info("tgn: %d nodes, events applied through id %d", len(live.nodes), live.applied_through)
        return live

    async def reconfigure(self, user_config: dict) -> None:
        self.settings = TGNUserConfig.model_validate(user_config or {})
        await super().reconfigure(self.settings.model_dump(include={"version", "fault_delay_ms"}))
        if self.loaded is not None:
            self.loaded.sessions.set_timeout(self.settings.session_timeout_s)

    def _read_log(self, live: LiveTGN) -> tuple[list[StoredEventRow], list[SessionEnd]]:
        """Everything stored after the live state's position (blocking; runs off the event loop)."""
        live.read_generation, live.read_at = self.log_watch.generation, time.monotonic()
        live.give_up_waiting(self.settings.straggler_wait_s)
        rows = self.store.events_after(live.applied_through, also=sorted(live.waiting), limit=LOG_PAGE)
        page = rows
        while len(page) == LOG_PAGE:
            page = self.store.events_after(page[-1].event_id, limit=LOG_PAGE)
            rows += page
        # An end id can commit after a higher one too; ends are idempotent, so re-read a few.
        return rows, self.store.session_ends_after(max(live.ends_through - END_LOOKBACK, 0))

    def _log_may_have_grown(self, live: LiveTGN) -> bool:
        watch = self.log_watch
        return (
            not watch.listening
            or live.read_generation != watch.generation
            or time.monotonic() - live.read_at >= self.settings.max_log_staleness_s
        )

    async def catch_up(self, live: LiveTGN, unless_unchanged: bool = False) -> None:
        """Apply what was stored since the last read; with `unless_unchanged`, only if the log may have grown."""
        # Read in a thread, apply on the event loop: a request never ranks while memory is half-updated.
        async with live.lock:
            self.log_watch.listen_soon()
            if unless_unchanged and not self._log_may_have_grown(live):
                return
            rows, ends = await asyncio.to_thread(self._read_log, live)
            live.apply(rows)
            live.apply_ends(ends)
            live.prune_sessions(datetime.now(UTC))

    # -- the model contract plus TGN's own methods ----------------------------------------------
    async def recommend(self, query: ModelQuery) -> Candidates:
        await self.fault_delay()
        live = self.loaded
        if live is None:
            return Candidates(source=MODEL)
        await self.catch_up(live, unless_unchanged=True)
        now = datetime.now(UTC)
        return live.rank(query, now, query.time.astimezone(UTC) if query.time is not None else now)

    async def observe(self, event_ids: list[int]) -> bool:
        """Catch up with the log; True when all of `event_ids` are applied."""
        live = self.loaded
        if live is None:
            return False
        await self.catch_up(live)
        return all(i <= live.applied_through and i not in live.waiting for i in event_ids)

    async def session(self, key: str) -> SessionState:
        live = self.loaded
        if live is None:
            return SessionTracker().state(key, datetime.now(UTC))
        await self.catch_up(live)
        return live.sessions.state(key, datetime.now(UTC))

    async def end_session(self, key: str) -> SessionState:
        """The session after its end (which the ingress has stored) is applied."""
        return await self.session(key)
