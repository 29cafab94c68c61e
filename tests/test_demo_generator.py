"""The demo generator: reproducible, the requested size, and its planted structure shows in the data."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.datasets import read_dataset
from pipelines.datasets.demo import CATEGORIES, START, read_demo
from stores.frames import EVENT_TYPES, Dataset
from tests.test_datasets import assert_contract

SMALL = {"users": 500, "items": 200, "events": 30_000, "days": 30}


@pytest.fixture(scope="module")
def demo() -> Dataset:
    return read_demo(seed=7, **SMALL)


@pytest.fixture(scope="module")
def events(demo: Dataset) -> pd.DataFrame:
    """Events with the item's category attached."""
    category = demo.items.set_index("item_id")["category"]
    return demo.events.assign(category=demo.events["item_id"].map(category))


def planted(demo: Dataset, key: str) -> pd.Series:
    return demo.users.set_index("user_id")["attrs"].map(lambda attrs: attrs[key])


def test_contract_and_sizes(demo: Dataset) -> None:
    assert_contract(demo)
    assert demo.name == "demo" and demo.preset_split is None
    assert abs(len(demo.events) - SMALL["events"]) <= 0.05 * SMALL["events"]
    assert len(demo.items) == SMALL["items"] and len(demo.users) == SMALL["users"]
    assert set(demo.events["event_type"]) == EVENT_TYPES
    assert demo.events["ts"].is_monotonic_increasing
    window_end = START + pd.Timedelta(days=SMALL["days"])
    assert demo.events["ts"].between(START, window_end, inclusive="left").all()


def test_reproducible(demo: Dataset) -> None:
    again = read_dataset("demo", seed=7, **SMALL)
    for name in ("events", "items", "users"):
        pd.testing.assert_frame_equal(getattr(demo, name), getattr(again, name))
    other = read_demo(seed=8, **SMALL)
    assert not other.events["item_id"].equals(demo.events["item_id"])


def test_default_size_hits_the_event_count() -> None:
    dataset = read_demo()
    assert abs(len(dataset.events) - 300_000) <= 15_000
    assert len(dataset.users) == 5_000 and len(dataset.items) == 1_000


def test_event_values(events: pd.DataFrame) -> None:
    by_type = events.groupby("event_type")["value"]
    ratings = events.loc[events["event_type"] == "rating", "value"]
    assert ratings.between(1, 5).all() and (ratings == ratings.round()).all()
    plays = events.loc[events["event_type"] == "play", "value"]
    assert (plays > 0).all()
    assert (events.loc[events["event_type"] == "purchase", "value"] > 0).all()
    for kind in ("impression", "click", "like", "add_to_cart"):
        assert by_type.get_group(kind).isna().all()
    # The funnel narrows: impressions > clicks > plays > purchases.
    counts = events["event_type"].value_counts()
    assert counts["impression"] > counts["click"] > counts["play"] > counts["purchase"]


def test_devices_are_the_users(demo: Dataset) -> None:
    device = demo.users.set_index("user_id")["device"]
    assert (demo.events["device"].to_numpy() == demo.events["user_id"].map(device).to_numpy()).all()
    mobile = device.isin(["ios", "android"]).mean()
    assert mobile > 0.5  # mostly mobile


def test_sessions(events: pd.DataFrame) -> None:
    sessions = events.groupby("session_id").agg(
        user=("user_id", "first"), users=("user_id", "nunique"), start=("ts", "min"), end=("ts", "max")
    )
    assert (sessions["users"] == 1).all()  # a session id belongs to one user
    sessions = sessions.sort_values(["user", "start"])
    same_user = sessions["user"].eq(sessions["user"].shift(-1))
    gaps = (sessions["start"].shift(-1) - sessions["end"])[same_user]
    assert (gaps > pd.Timedelta(minutes=30)).all()
    ordered = events.sort_values(["session_id", "ts"])
    within = ordered["ts"].diff().dt.total_seconds()[ordered["session_id"].eq(ordered["session_id"].shift())]
    assert within.between(5, 120).all()
    # Focus drifts: many sessions touch more than one genre, but most steps stay on one.
    genres = events.groupby("session_id")["category"].nunique()
    assert 0.2 < (genres > 1).mean() < 0.9
    # Heavy-tailed activity: the busiest user has many times the median number of sessions.
    per_user = sessions.groupby("user").size()
    assert per_user.max() >= 8 * per_user.median()


def test_taste_shows_in_plays(demo: Dataset, events: pd.DataFrame) -> None:
    plays = events[events["event_type"] == "play"]
    counts = plays.groupby(["user_id", "category"]).size().unstack(fill_value=0)
    most_played = counts.idxmax(axis=1)
    top = planted(demo, "taste_top_category").reindex(most_played.index)
    agreement = (most_played == top).mean()
    assert agreement > 3 / len(CATEGORIES), agreement  # chance is 1/8


def test_taste_shows_in_ratings(demo: Dataset, events: pd.DataFrame) -> None:
    ratings = events[events["event_type"] == "rating"]
    top = ratings["user_id"].map(planted(demo, "taste_top_category"))
    favourite = ratings["category"].to_numpy() == top.to_numpy()
    assert ratings["value"][favourite].mean() > ratings["value"][~favourite].mean() + 0.3


def test_devices_have_different_genre_mixes(events: pd.DataFrame) -> None:
    mix = pd.crosstab(events["device"], events["category"], normalize="index")
    console = mix.loc["console", ["shooter", "racing"]].sum()
    mobile = mix.loc[["ios", "android"], ["shooter", "racing"]].sum(axis=1).mean()
    assert console > 2 * mobile
    mobile_casual = mix.loc[["ios", "android"], ["casual", "puzzle"]].sum(axis=1).min()
    assert mobile_casual > 2 * mix.loc["console", ["casual", "puzzle"]].sum()


def test_popularity_long_tail(events: pd.DataFrame) -> None:
    shown = events.loc[events["event_type"] == "impression", "item_id"].value_counts()
    top_decile = shown.head(max(1, len(shown) // 10)).sum() / shown.sum()
    assert top_decile > 0.3  # a uniform catalogue would give 0.1


def test_new_items_have_no_events(demo: Dataset) -> None:
    window_end = START + pd.Timedelta(days=SMALL["days"])
    new = demo.items[demo.items["created_at"] >= window_end - pd.Timedelta(days=2)]
    assert 0.03 * len(demo.items) <= len(new) <= 0.07 * len(demo.items)
    assert not demo.events["item_id"].isin(new["item_id"]).any()
    assert (demo.items["created_at"] < window_end).all()


def test_created_before_first_event(demo: Dataset) -> None:
    for frame, key in ((demo.items, "item_id"), (demo.users, "user_id")):
        first = demo.events.groupby(key)["ts"].min()
        assert (frame.set_index(key)["created_at"].reindex(first.index) <= first).all()


def test_catalogue_text_supports_retrieval(demo: Dataset) -> None:
    items = demo.items
    assert items["title"].is_unique
    assert items["provider"].nunique() > 20 and set(items["category"]) == set(CATEGORIES)
    assert items["badges"].map(len).between(2, 5).all()
    for row in items.itertuples():
        text = row.description
        assert row.category in text and row.provider in text and row.title in text
        assert all(badge in text for badge in row.badges)
    # Providers specialise: each makes at most two genres.
    assert items.groupby("provider")["category"].nunique().max() <= 2
