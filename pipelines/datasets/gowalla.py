"""Gowalla check-ins in the NGCF/LightGCN split, from `<data_dir>/gowalla`.

Source files: train.txt and test.txt, one user per line: `user_id item_id item_id ...` (space
separated, 0-based remapped ids; 810,128 train and 217,242 test interactions, 29,858 users, 40,981
locations). Every interaction becomes a "click" event with no value; ids are the remapped ids as text.

Synthesised: the files carry no times, so train events get ts 2020-01-01T00:00Z and test events
2020-01-02T00:00Z, and preset_split (test_from 2020-01-01T12:00Z) reproduces the published split
exactly. There is no item metadata (bare items, title = item_id) and no user data.
"""

from __future__ import annotations

import re
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from stores.frames import Dataset, DatasetFormatError, PresetSplit

from .validation import LineSource, check_events, complete_items, empty_users, events_frame

FOLDER = "gowalla"
TRAIN_TS = pd.Timestamp("2020-01-01T00:00Z")
TEST_TS = pd.Timestamp("2020-01-02T00:00Z")
SPLIT = PresetSplit(
    test_from=pd.Timestamp("2020-01-01T12:00Z").to_pydatetime(), description="LightGCN/NGCF paper split"
)
_NOT_ID = re.compile(r"[^0-9\s]")


def read_gowalla(data_dir: Path) -> Dataset:
    folder = Path(data_dir) / FOLDER
    events = pd.concat(
        [read_interactions(folder / "train.txt", TRAIN_TS), read_interactions(folder / "test.txt", TEST_TS)],
        ignore_index=True,
    )
    return Dataset(
        name="gowalla",
        events=events,
        items=complete_items(None, events),
        users=empty_users(),
        preset_split=SPLIT,
        source=str(folder),
    )


def read_interactions(path: Path, ts: pd.Timestamp) -> pd.DataFrame:
    """One `user item item ...` file as click events at time `ts`."""
    text = path.read_text(encoding="ascii", errors="replace")
    # One regex pass over the whole file validates every token without touching them one by one.
    bad = _NOT_ID.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        token = next(t for t in text.split("\n")[line - 1].split() if not t.isdigit())
        raise DatasetFormatError(path, line, f"{token!r} is not a non-negative integer id")
    rows = [line.split() for line in text.split("\n")]
    counts = np.fromiter((max(len(r) - 1, 0) for r in rows), dtype=np.int64, count=len(rows))
    users = np.array([r[0] if r else None for r in rows], dtype=object)
    items = np.fromiter(chain.from_iterable(r[1:] for r in rows), dtype=object, count=int(counts.sum()))
    events = events_frame(
        user_id=np.repeat(users, counts),
        item_id=items,
        event_type="click",
        ts=ts,
    )
    check_events(LineSource(path, np.repeat(np.arange(1, len(rows) + 1), counts)), events)
    return events
