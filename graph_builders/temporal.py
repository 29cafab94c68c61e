"""The chronological event stream TGN trains on, and sessions for session-aware serving.

One TemporalData row per event, sorted by time (stable, so equal timestamps keep frame order):

    src  = user-key index                                   (interaction_key: user, or "session:<id>")
    dst  = item index + num_users                           (one node id space, as in PyG's TGN example)
    t    = unix seconds (int64, floored)
    msg  = [one-hot(event_type) over EVENT_TYPE_ORDER,      (len(EVENT_TYPE_ORDER) columns)
            w(e): signed edge weight WITHOUT time decay,    (TGN's own time encoder handles recency)
            log1p(max(value, 0)), 0 when value is missing]  -> MESSAGE_DIM = len(EVENT_TYPE_ORDER) + 2

Sessions: a session_id, when the event has one, names the session as given. Events of a known user without
a session_id are cut into sessions at gaps of more than `gap_minutes` (30) of inactivity, keyed
"<user_id>#<n>" with n counting that user's sessions from 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import TemporalData

from graph_builders.edge_weights import EdgeWeights, base_weights, epoch_seconds, interaction_key
from stores.frames import EventType

EVENT_TYPE_ORDER: tuple[str, ...] = tuple(kind.value for kind in EventType)  # fixed: EVENT_TYPES is a set
MESSAGE_DIM = len(EVENT_TYPE_ORDER) + 2
SESSION_COLUMNS = ["session_key", "user_key", "item_ids", "start", "end"]


@dataclass
class TemporalStream:
    data: TemporalData  # src, dst (offset by num_users), t, msg [E, MESSAGE_DIM]
    user_index: dict[str, int]
    item_index: dict[str, int]
    dropped: int  # events whose user key or item is not in the maps (or has neither user nor session)

    @property
    def num_users(self) -> int:
        return len(self.user_index)

    @property
    def num_items(self) -> int:
        return len(self.item_index)

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items


def event_messages(events: pd.DataFrame, config: EdgeWeights) -> np.ndarray:
    """[n, MESSAGE_DIM] float32 message features in row order (see module docstring)."""
    kinds = events["event_type"].astype(object).to_numpy()
    one_hot = (kinds[:, None] == np.asarray(EVENT_TYPE_ORDER, dtype=object)[None, :]).astype(np.float32)
    weight = base_weights(events, config.without_decay())
    value = np.nan_to_num(events["value"].to_numpy(dtype=np.float64, na_value=np.nan), nan=0.0)
    return np.column_stack([one_hot, weight, np.log1p(np.clip(value, 0.0, None))]).astype(np.float32)


def build_temporal_stream(
    events: pd.DataFrame,
    user_index: dict[str, int],
    item_index: dict[str, int],
    config: EdgeWeights = EdgeWeights(),
) -> TemporalStream:
    """Events as a time-sorted TemporalData; events outside the id maps are dropped and counted."""
    users = interaction_key(events).map(user_index).to_numpy(dtype=np.float64, na_value=np.nan)
    items = events["item_id"].astype(object).map(item_index).to_numpy(dtype=np.float64, na_value=np.nan)
    keep = ~(np.isnan(users) | np.isnan(items))
    kept = events[keep]
    seconds = epoch_seconds(kept["ts"])
    order = np.argsort(seconds, kind="stable")

    src = users[keep][order].astype(np.int64)
    dst = items[keep][order].astype(np.int64) + len(user_index)
    data = TemporalData(
        src=torch.from_numpy(src),
        dst=torch.from_numpy(dst),
        t=torch.from_numpy(np.floor(seconds[order]).astype(np.int64)),
        msg=torch.from_numpy(event_messages(kept, config)[order]),
    )
    return TemporalStream(data=data, user_index=user_index, item_index=item_index, dropped=int((~keep).sum()))


def session_sequences(events: pd.DataFrame, gap_minutes: float = 30.0) -> pd.DataFrame:
    """One row per session, ordered by start: session_key, user_key, item_ids (time-ordered list), start, end.

    Events with neither a user nor a session are dropped.
    """
    frame = pd.DataFrame(
        {
            "user_id": events["user_id"].astype(object).to_numpy(),
            "session_id": events["session_id"].astype(object).to_numpy(),
            "user_key": interaction_key(events).to_numpy(),
            "item_id": events["item_id"].astype(object).to_numpy(),
            "ts": pd.to_datetime(events["ts"], utc=True).array,
            "seconds": epoch_seconds(events["ts"]),
        }
    )
    frame = frame[frame["user_key"].notna()]
    named = frame[frame["session_id"].notna()].assign(session_key=lambda f: f["session_id"])
    implicit = _split_at_gaps(frame[frame["session_id"].isna()], gap_minutes)
    stream = pd.concat([named, implicit]).sort_values(["session_key", "seconds"], kind="stable")
    if stream.empty:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in SESSION_COLUMNS})
    sessions = stream.groupby("session_key", sort=False).agg(
        user_key=("user_key", "first"), item_ids=("item_id", list), start=("ts", "min"), end=("ts", "max")
    )
    sessions = sessions.reset_index().sort_values(["start", "session_key"], kind="stable", ignore_index=True)
    return sessions[SESSION_COLUMNS]


def _split_at_gaps(frame: pd.DataFrame, gap_minutes: float) -> pd.DataFrame:
    """Session keys "<user_id>#<n>" for one user's stream: a new session after more than gap_minutes idle."""
    frame = frame.sort_values(["user_id", "seconds"], kind="stable")
    user = frame["user_id"]
    starts = (user != user.shift()) | (frame["seconds"].diff() > gap_minutes * 60.0)
    ordinal = starts.astype(np.int64).groupby(user).cumsum() - 1
    return frame.assign(session_key=user.astype(str) + "#" + ordinal.astype(str))
