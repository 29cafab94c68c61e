"""The YOOCHOOSE 100k-click sample as session-rec evaluates it: train sessions, test sessions and the
next-item cases, straight from the files (session-rec's own split: train_full / test)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from graph_builders.edge_weights import epoch_seconds
from graph_builders.temporal import session_sequences
from models.next_item import NextItemCases, next_item_cases
from pipelines.datasets.yoochoose import read_yoochoose

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"


@dataclass
class YoochooseSessions:
    events: pd.DataFrame  # every click, train and test (stores.frames.EVENT_COLUMNS)
    item_ids: list[str]  # the train items, sorted: the catalogue every case is ranked against
    item_index: dict[str, int]
    train_sessions: list[list[int]]  # item indices in time order, sessions ordered by first click
    train_session_times: list[float]  # unix seconds of each train session's last click
    test_sessions: list[list[int]]  # train items only, >= 2 clicks each, ordered by first click
    cases: NextItemCases  # next_item_cases(test_sessions)
    test_from: pd.Timestamp  # the first test click

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def yoochoose_sessions(data_dir: Path = DEFAULT_DATA_DIR, part: str = "full") -> YoochooseSessions:
    """Clicks before the split time are train, the rest test (every test click is later than every train
    click in this sample). As in session-rec's preprocessing, test clicks on items absent from train are
    dropped, then test sessions with fewer than 2 clicks left. part="validation": session-rec's tuning split
    (train_tr / train_valid), with train_valid in the test role."""
    started = time.perf_counter()
    dataset = read_yoochoose(Path(data_dir), part=part)
    events = dataset.events
    test_from = pd.Timestamp(dataset.preset_split.test_from)
    is_test = (events["ts"] >= test_from).to_numpy()
    train = session_sequences(events[~is_test])
    item_ids = sorted(set(events.loc[~is_test, "item_id"]))
    item_index = {item: i for i, item in enumerate(item_ids)}
    train_sessions = [[item_index[item] for item in items] for items in train["item_ids"]]
    test_sessions = [
        known
        for known in ([item_index[item] for item in items if item in item_index]
                      for items in session_sequences(events[is_test])["item_ids"])
        if len(known) >= 2
    ]
    data = YoochooseSessions(
        events=events,
        item_ids=item_ids,
        item_index=item_index,
        train_sessions=train_sessions,
        train_session_times=epoch_seconds(train["end"]).astype(np.float64).tolist(),
        test_sessions=test_sessions,
        cases=next_item_cases(test_sessions),
        test_from=test_from,
    )
    print(f"yoochoose-100k ({part}): {len(train_sessions):,} train sessions, {len(test_sessions):,} test sessions, "
          f"{data.num_items:,} items, {len(data.cases):,} next-item cases "
          f"({time.perf_counter() - started:.1f} s to build)", flush=True)
    return data
