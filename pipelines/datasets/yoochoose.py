"""YOOCHOOSE clicks (RecSys Challenge 2015), the session-rec 100k-click sample and split.

Source: `<data_dir>/yoochoose-100k-sample/yoochoose-clicks-100k_<part>.txt`, tab-separated with the
header `SessionId ItemId Time` (unix seconds, float). Sessions are anonymous: each click becomes a
"click" event with user_id None and session_id = SessionId; ts keeps the file's millisecond times.
Nothing is synthesised except bare items (title = item_id; the sample has no item metadata).

part="full" loads train_full + test. preset_split.test_from is the first test click, and every
test click is later than every train click, so the split is reproduced exactly. part="validation"
loads train_tr + train_valid with test_from = the first train_valid click. session-rec splits whole
sessions by their last click, so there one train_tr session (4 clicks) runs past test_from and a
per-event time split puts those 4 clicks on the test side.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import pandas as pd

from stores.frames import Dataset, PresetSplit

from .validation import (
    as_text,
    check_events,
    complete_items,
    empty_fields,
    empty_users,
    events_frame,
    parse_ts,
    read_delimited,
    require_columns,
)

FOLDER = "yoochoose-100k-sample"
PARTS = {"full": ("train_full", "test"), "validation": ("train_tr", "train_valid")}
COLUMNS = ["SessionId", "ItemId", "Time"]


def read_yoochoose(data_dir: Path, part: Literal["full", "validation"] = "full") -> Dataset:
    if part not in PARTS:
        raise ValueError(f"part must be one of {sorted(PARTS)}, not {part!r}")
    folder = Path(data_dir) / FOLDER
    train_name, test_name = PARTS[part]
    train = read_clicks(folder / f"yoochoose-clicks-100k_{train_name}.txt")
    test = read_clicks(folder / f"yoochoose-clicks-100k_{test_name}.txt")
    events = pd.concat([train, test], ignore_index=True)
    split = PresetSplit(
        test_from=test["ts"].min().to_pydatetime(),
        description=f"session-rec split ({train_name} / {test_name})",
    )
    return Dataset(
        name="yoochoose",
        events=events,
        items=complete_items(None, events),
        users=empty_users(),
        preset_split=split,
        source=f"{folder} ({train_name} + {test_name})",
    )


def read_clicks(path: Path) -> pd.DataFrame:
    """One session-rec click file as anonymous click events."""
    raw, source = read_delimited(path, sep="\t", quoting=csv.QUOTE_NONE)
    require_columns(path, raw.columns, COLUMNS, (), line=1)
    ts, bad_ts = parse_ts(raw["Time"], "Time")
    events = events_frame(
        session_id=as_text(raw["SessionId"]),
        item_id=as_text(raw["ItemId"]),
        event_type="click",
        ts=ts,
    )
    check_events(source, events, [empty_fields(raw, "tab"), bad_ts])
    return events
