"""The tabular contract between dataset readers, the event store and the graph builders.

Readers produce these frames; the event store COPYs them into PostgreSQL and reads them back
with the same columns and dtypes, so graph builders never care where a frame came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import pandas as pd


class EventType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    PLAY = "play"  # value = seconds played
    RATING = "rating"  # value = 1..5
    PURCHASE = "purchase"
    LIKE = "like"
    ADD_TO_CART = "add_to_cart"


EVENT_TYPES = frozenset(t.value for t in EventType)

# Column order is the COPY order. dtypes: ids and text are str (object, None when missing),
# value is float64 (NaN when missing), ts / created_at are tz-aware UTC datetime64 (any unit),
# badges is a list[str] per row, attrs a dict per row.
EVENT_COLUMNS = ["user_id", "item_id", "session_id", "event_type", "value", "device", "ts", "idempotency_key"]
ITEM_COLUMNS = ["item_id", "title", "description", "provider", "category", "badges", "attrs", "created_at"]
USER_COLUMNS = ["user_id", "device", "attrs", "created_at"]


class DatasetFormatError(ValueError):
    """A source file is malformed. Names the file and the 1-based line so a user can fix it."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class PresetSplit:
    """A published train/test split kept as given: every event at or after `test_from` is test.

    Datasets without real times (Gowalla) get synthetic ones that reproduce their split exactly.
    """

    test_from: datetime
    description: str


@dataclass
class Dataset:
    """One loadable dataset: events plus the catalogue and (optionally) user attributes."""

    name: str
    events: pd.DataFrame  # EVENT_COLUMNS
    items: pd.DataFrame  # ITEM_COLUMNS
    users: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=USER_COLUMNS))
    preset_split: PresetSplit | None = None
    source: str = ""

    def summary(self) -> dict:
        ts = self.events["ts"]
        return {
            "dataset": self.name,
            "events": len(self.events),
            "users": int(self.events["user_id"].nunique()),
            "sessions": int(self.events["session_id"].nunique()),
            "items": len(self.items),
            "first_event": ts.min().isoformat() if len(ts) else None,
            "last_event": ts.max().isoformat() if len(ts) else None,
        }
