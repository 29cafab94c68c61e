"""MovieLens 100K (GroupLens), from `<data_dir>/ml-100k`.

Source files: u.data (tab-separated `user item rating unix_time`, 100,000 ratings), u.item
(`|`-separated, latin-1: id, title, release date, video release date, IMDb URL, 19 genre flags),
u.genre (genre names by flag position) and u.user (`id|age|gender|occupation|zip`).

Events are "rating" events with value = the 1..5 rating. Items get category = their first genre,
badges = all their genres, description = the release date text. Nothing is synthesised except
created_at (MovieLens has none): an item's or user's first rating time. The published u1..u5/ua/ub
splits are not used: preset_split is None and temporal splits are computed downstream.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from stores.frames import Dataset, DatasetFormatError

from .validation import (
    Check,
    as_text,
    check_events,
    complete_items,
    empty_fields,
    events_frame,
    fill_created_at,
    items_frame,
    parse_float,
    parse_ts,
    raise_first,
    read_delimited,
    users_frame,
)

FOLDER = "ml-100k"
ENCODING = "latin-1"  # u.item has accented titles in ISO-8859-1
ITEM_FIELDS = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
USER_FIELDS = ["user_id", "age", "gender", "occupation", "zip"]


def read_movielens(data_dir: Path) -> Dataset:
    folder = Path(data_dir) / FOLDER
    events = _read_ratings(folder / "u.data")
    items = complete_items(_read_items(folder / "u.item", _read_genres(folder / "u.genre")), events)
    users = fill_created_at(_read_users(folder / "u.user"), "user_id", events)
    return Dataset(name="ml-100k", events=events, items=items, users=users, source=str(folder))


def _read_ratings(path: Path) -> pd.DataFrame:
    raw, source = read_delimited(
        path, sep="\t", names=["user_id", "item_id", "rating", "ts"], encoding=ENCODING, quoting=csv.QUOTE_NONE
    )
    rating, bad_rating = parse_float(raw["rating"], "rating")
    ts, bad_ts = parse_ts(raw["ts"], "unix time")
    events = events_frame(
        user_id=as_text(raw["user_id"]),
        item_id=as_text(raw["item_id"]),
        event_type="rating",
        value=rating,
        ts=ts,
    )
    check_events(source, events, [empty_fields(raw, "tab"), bad_rating, bad_ts])
    return events


def _read_genres(path: Path) -> list[str]:
    """Genre names indexed by their flag position in u.item."""
    genres: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding=ENCODING).splitlines(), start=1):
        if not line.strip():
            continue
        name, _, index = line.rpartition("|")
        if not name or not index.isdigit():
            raise DatasetFormatError(path, number, "expected `genre name|flag index`")
        genres[int(index)] = name
    if sorted(genres) != list(range(len(genres))):
        raise DatasetFormatError(path, None, f"flag indexes {sorted(genres)} are not 0..{len(genres) - 1}")
    return [genres[i] for i in range(len(genres))]


def _read_items(path: Path, genres: list[str]) -> pd.DataFrame:
    raw, source = read_delimited(
        path, sep="|", names=ITEM_FIELDS + genres, encoding=ENCODING, quoting=csv.QUOTE_NONE
    )
    flags = raw[genres].to_numpy()
    raise_first(
        source,
        [
            Check((raw["item_id"] == "").to_numpy(), lambda _: "empty movie id"),
            Check(
                ~np.isin(flags, ["0", "1"]).all(axis=1),
                lambda _: f"expected {len(raw.columns)} |-separated fields ending in {len(genres)} 0/1 genre flags",
            ),
        ],
    )
    has_genre = flags == "1"
    names = np.asarray(genres, dtype=object)
    badges = [list(names[row]) for row in has_genre]
    release, url = as_text(raw["release_date"]), as_text(raw["imdb_url"])
    attrs = [
        {key: value for key, value in (("release_date", r), ("imdb_url", u)) if value is not None}
        for r, u in zip(release, url)
    ]
    return items_frame(
        item_id=as_text(raw["item_id"]),
        title=as_text(raw["title"]),
        description=release,
        category=[b[0] if b else None for b in badges],
        badges=badges,
        attrs=attrs,
    )


def _read_users(path: Path) -> pd.DataFrame:
    raw, source = read_delimited(path, sep="|", names=USER_FIELDS, encoding=ENCODING, quoting=csv.QUOTE_NONE)
    age, bad_age = parse_float(raw["age"], "age")
    raise_first(
        source,
        [
            empty_fields(raw, "|"),
            bad_age,
            Check(age != np.floor(age), lambda row: f"age {raw['age'].iat[row]!r} is not a whole number"),
        ],
    )
    attrs = [
        {"age": int(a), "gender": g, "occupation": o, "zip": z}
        for a, g, o, z in zip(age, raw["gender"], raw["occupation"], raw["zip"])
    ]
    return users_frame(user_id=as_text(raw["user_id"]), attrs=attrs)
