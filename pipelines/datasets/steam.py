"""Steam play hours (Kaggle steam-200k, play rows) joined to the UCSD Steam game catalogue.

Sources in `<data_dir>/steam`:
- steam-200k_play-only.csv: header `user-id,game-title,value,` then `user,title,hours,` rows (70,489).
  Each row becomes a "play" event, value = hours * 3600 (seconds), user_id = the Steam user id.
  Repeated (user, title) rows are kept as separate events.
- steam_games.json.gz: one Python dict literal per line (parsed with ast.literal_eval).

Items: a played title that equals a catalogue `app_name` exactly (about half of them) becomes the
catalogue game: item_id = UCSD id, provider = developer (else publisher), category = first genre,
badges = tags, a description from genres/tags/specs, attrs {publisher, developer, genres, price,
release_date} (keys present in the source only). Where several catalogue entries share an
app_name, the one with the most metadata wins. Other titles become bare items "title:<title>".
`include_unplayed_catalog=True` adds the unplayed catalogue games too.

Synthesised: the play file has no times. Events get seeded uniform random timestamps in
[2017-01-01, 2018-01-01) UTC (`seed`), so a "temporal" split of steam is really a seeded random
holdout. created_at is the item's first (synthetic) play. There is no user data.
"""

from __future__ import annotations

import ast
import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stores.frames import Dataset, DatasetFormatError

from .validation import (
    Check,
    as_text,
    check_events,
    complete_items,
    empty_users,
    events_frame,
    items_frame,
    parse_float,
    read_delimited,
    require_columns,
)

FOLDER = "steam"
PLAYS_FILE = "steam-200k_play-only.csv"
CATALOG_FILE = "steam_games.json.gz"
TS_START = pd.Timestamp("2017-01-01", tz="UTC")
TS_SPAN_SECONDS = 365 * 24 * 3600
UNMATCHED_PREFIX = "title:"


def read_steam(data_dir: Path, seed: int = 0, include_unplayed_catalog: bool = False) -> Dataset:
    folder = Path(data_dir) / FOLDER
    events = _read_plays(folder / PLAYS_FILE, seed)
    games = _read_catalog(folder / CATALOG_FILE)
    by_title = _best_by_title(games)
    titles = events["item_id"]
    matched = titles.map({title: game["id"] for title, game in by_title.items()})
    events["item_id"] = pd.Series(as_text(matched.fillna(UNMATCHED_PREFIX + titles)), dtype=object)
    played = titles.unique()
    if not include_unplayed_catalog:
        games = [by_title[title] for title in played if title in by_title]
    unmatched = np.asarray([title for title in played if title not in by_title], dtype=object)
    items = pd.concat(
        [_catalog_items(games), items_frame(item_id=UNMATCHED_PREFIX + unmatched, title=unmatched)],
        ignore_index=True,
    )
    return Dataset(
        name="steam",
        events=events,
        items=complete_items(items, events),
        users=empty_users(),
        source=f"{folder / PLAYS_FILE} + {folder / CATALOG_FILE} (seed={seed})",
    )


def _read_plays(path: Path, seed: int) -> pd.DataFrame:
    """Play events with item_id = the game title (matched to the catalogue later) and seeded times."""
    raw, source = read_delimited(path, sep=",")
    # The header ends in a comma, so pandas adds an unnamed empty column: ignore such columns.
    named = [c for c in raw.columns if not c.startswith("Unnamed:")]
    require_columns(path, named, ["user-id", "game-title", "value"], (), line=1)
    hours, bad_hours = parse_float(raw["value"], "hours")
    offsets = np.random.default_rng(seed).integers(0, TS_SPAN_SECONDS, size=len(raw))
    events = events_frame(
        user_id=as_text(raw["user-id"]),
        item_id=as_text(raw["game-title"]),
        event_type="play",
        value=hours * 3600.0,
        ts=TS_START + pd.to_timedelta(offsets, unit="s"),
    )
    check_events(source, events, [bad_hours, Check(np.isnan(hours), lambda _: "missing hours played")])
    return events


def _read_catalog(path: Path) -> list[dict[str, Any]]:
    """The UCSD catalogue entries that have an id and an app_name, first entry per id."""
    games: dict[str, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            game = _parse_game(path, number, line)
            if game.get("id") and game.get("app_name"):
                games.setdefault(str(game["id"]), game | {"id": str(game["id"])})
    return list(games.values())


def _best_by_title(games: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """app_name -> entry. A few names have several entries: keep the one with the most metadata
    (some duplicates are empty stubs), the first in file order on a tie."""
    best: dict[str, dict[str, Any]] = {}
    for game in games:
        current = best.get(game["app_name"])
        if current is None or _richness(game) > _richness(current):
            best[game["app_name"]] = game
    return best


def _richness(game: dict[str, Any]) -> int:
    return sum(bool(game.get(key)) for key in ("developer", "publisher", "genres", "tags", "specs", "price"))


def _catalog_items(games: list[dict[str, Any]]) -> pd.DataFrame:
    return items_frame(
        item_id=[game["id"] for game in games],
        title=[game["app_name"] for game in games],
        description=[_describe(game) for game in games],
        provider=[game.get("developer") or game.get("publisher") for game in games],
        category=[(game.get("genres") or [None])[0] for game in games],
        badges=[list(game.get("tags") or []) for game in games],
        attrs=[_attrs(game) for game in games],
    )


def _parse_game(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        game = ast.literal_eval(line)
    except (ValueError, SyntaxError) as exc:
        raise DatasetFormatError(path, number, f"not a Python dict literal: {exc}") from exc
    if not isinstance(game, dict):
        raise DatasetFormatError(path, number, f"expected a dict, got {type(game).__name__}")
    return game


def _describe(game: dict[str, Any]) -> str | None:
    parts = [
        f"{label}: {', '.join(game[key])}."
        for label, key in (("Genres", "genres"), ("Tags", "tags"), ("Features", "specs"))
        if game.get(key)
    ]
    return " ".join(parts) or None


def _attrs(game: dict[str, Any]) -> dict[str, Any]:
    keys = ("publisher", "developer", "genres", "price", "release_date")
    return {key: game[key] for key in keys if game.get(key) is not None}
