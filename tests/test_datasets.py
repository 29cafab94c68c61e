"""Dataset readers: the real shared files (counts from each folder's README) and malformed copies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.datasets import READERS, default_data_dir, read_dataset
from pipelines.datasets.gowalla import TEST_TS, TRAIN_TS, read_interactions
from pipelines.datasets.yoochoose import read_clicks
from stores.frames import EVENT_COLUMNS, EVENT_TYPES, ITEM_COLUMNS, USER_COLUMNS, Dataset, DatasetFormatError

DATA_DIR = default_data_dir()
needs_data = pytest.mark.skipif(not (DATA_DIR / "ml-100k").is_dir(), reason=f"shared data not at {DATA_DIR}")
TS_DTYPE = pd.DatetimeTZDtype("ns", "UTC")


# --------------------------------------------------------------------------------------------
# Contract checks shared by every reader


def assert_text(column: pd.Series, nullable: bool = True) -> None:
    assert column.dtype == object, column.name
    present = column.notna()
    assert pd.api.types.infer_dtype(column[present], skipna=False) in ("string", "empty"), column.name
    missing = column[~present]
    assert all(value is None for value in missing), f"{column.name}: missing values must be None"
    if not nullable:
        assert present.all(), f"{column.name} has missing values"


def assert_contract(dataset: Dataset) -> None:
    events, items, users = dataset.events, dataset.items, dataset.users
    assert list(events.columns) == EVENT_COLUMNS
    assert list(items.columns) == ITEM_COLUMNS
    assert list(users.columns) == USER_COLUMNS
    for name in ("user_id", "session_id", "device", "idempotency_key"):
        assert_text(events[name])
    assert_text(events["item_id"], nullable=False)
    assert_text(events["event_type"], nullable=False)
    assert events["value"].dtype == np.float64
    assert events["ts"].dtype == TS_DTYPE and events["ts"].notna().all()
    assert set(events["event_type"].unique()) <= EVENT_TYPES
    assert (events["user_id"].notna() | events["session_id"].notna()).all()
    assert events["idempotency_key"].isna().all()  # bulk data

    assert_text(items["item_id"], nullable=False)
    assert items["item_id"].is_unique
    for name in ("title", "description", "provider", "category"):
        assert_text(items[name])
    assert all(isinstance(b, list) and all(isinstance(x, str) for x in b) for b in items["badges"])
    assert all(isinstance(a, dict) for a in items["attrs"])
    assert items["created_at"].dtype == TS_DTYPE and items["created_at"].notna().all()
    assert set(events["item_id"].unique()) <= set(items["item_id"])

    assert_text(users["user_id"], nullable=False)
    assert users["user_id"].is_unique
    assert_text(users["device"])
    assert all(isinstance(a, dict) for a in users["attrs"])
    assert users["created_at"].dtype == TS_DTYPE and users["created_at"].notna().all()


def split_counts(dataset: Dataset, key: str) -> tuple[int, int, int, int]:
    """(train rows, test rows, train distinct `key`, test distinct `key`) by the preset split."""
    test = dataset.events["ts"] >= pd.Timestamp(dataset.preset_split.test_from)
    events = dataset.events
    return int((~test).sum()), int(test.sum()), events.loc[~test, key].nunique(), events.loc[test, key].nunique()


# --------------------------------------------------------------------------------------------
# Real files, each read once


@pytest.fixture(scope="module")
def movielens() -> Dataset:
    return read_dataset("ml-100k")


@pytest.fixture(scope="module")
def gowalla() -> Dataset:
    return read_dataset("gowalla")


@pytest.fixture(scope="module")
def steam() -> Dataset:
    return read_dataset("steam")


@pytest.fixture(scope="module")
def yoochoose() -> Dataset:
    return read_dataset("yoochoose")


def test_registry() -> None:
    assert set(READERS) == {"demo", "ml-100k", "steam", "gowalla", "yoochoose", "generic"}
    with pytest.raises(ValueError, match="unknown dataset"):
        read_dataset("netflix")


@needs_data
def test_movielens(movielens: Dataset) -> None:
    assert_contract(movielens)
    events = movielens.events
    assert len(events) == 100_000
    assert events["user_id"].nunique() == 943 and len(movielens.users) == 943
    assert events["item_id"].nunique() == 1_682 and len(movielens.items) == 1_682
    assert (events["event_type"] == "rating").all() and events["value"].between(1, 5).all()
    assert events["ts"].min() == pd.Timestamp(874724710, unit="s", tz="UTC")
    assert events["ts"].max() == pd.Timestamp(893286638, unit="s", tz="UTC")
    assert movielens.preset_split is None
    first = events.iloc[0]  # u.data line 1: 196 242 3 881250949
    assert (first["user_id"], first["item_id"], first["value"]) == ("196", "242", 3.0)

    toy_story = movielens.items.set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story (1995)" and toy_story["description"] == "01-Jan-1995"
    assert toy_story["category"] == "Animation"
    assert toy_story["badges"] == ["Animation", "Children's", "Comedy"]
    assert toy_story["attrs"]["imdb_url"].startswith("http://us.imdb.com/")
    user = movielens.users.set_index("user_id").loc["1"]
    assert user["attrs"] == {"age": 24, "gender": "M", "occupation": "technician", "zip": "85711"}
    assert user["device"] is None


@needs_data
def test_gowalla(gowalla: Dataset) -> None:
    assert_contract(gowalla)
    assert len(gowalla.events) == 810_128 + 217_242
    assert gowalla.events["user_id"].nunique() == 29_858
    assert len(gowalla.items) == gowalla.events["item_id"].nunique() == 40_981
    assert (gowalla.events["event_type"] == "click").all() and gowalla.events["value"].isna().all()
    assert gowalla.users.empty
    test_from = pd.Timestamp(gowalla.preset_split.test_from)
    assert TRAIN_TS < test_from <= TEST_TS
    assert split_counts(gowalla, "user_id")[:2] == (810_128, 217_242)
    ids = gowalla.events["item_id"]
    assert ids.str.fullmatch(r"\d+").all() and ids.astype(int).max() == 40_980


@needs_data
def test_gowalla_files_match_the_split() -> None:
    train = read_interactions(DATA_DIR / "gowalla" / "train.txt", TRAIN_TS)
    test = read_interactions(DATA_DIR / "gowalla" / "test.txt", TEST_TS)
    assert (len(train), len(test)) == (810_128, 217_242)
    pairs = lambda f: set(zip(f["user_id"], f["item_id"]))  # noqa: E731
    assert not pairs(train) & pairs(test)  # README: disjoint


@needs_data
def test_steam(steam: Dataset) -> None:
    assert_contract(steam)
    events = steam.events
    assert len(events) == 70_489
    assert events["user_id"].nunique() == 9_418
    assert len(steam.items) == events["item_id"].nunique() == 3_600
    matched = ~steam.items["item_id"].str.startswith("title:")
    assert matched.sum() == 1_842
    assert (events["event_type"] == "play").all()
    year = (pd.Timestamp("2017-01-01", tz="UTC"), pd.Timestamp("2018-01-01", tz="UTC"))
    assert events["ts"].between(*year, inclusive="left").all()
    assert steam.preset_split is None and steam.users.empty

    first = events.iloc[0]  # 151603712,The Elder Scrolls V Skyrim,273,1
    assert first["user_id"] == "151603712" and first["value"] == 273 * 3600
    raw = pd.read_csv(DATA_DIR / "steam" / "steam-200k_play-only.csv", dtype=str, keep_default_na=False)
    assert np.allclose(events["value"].to_numpy(), raw["value"].astype(float).to_numpy() * 3600)
    duplicated = raw.duplicated(["user-id", "game-title"], keep=False)
    assert duplicated.any() and events[duplicated.to_numpy()].duplicated(["user_id", "item_id"]).any()

    items = steam.items.set_index("item_id")
    fallout = items[items["title"] == "Fallout 4"].iloc[0]
    assert fallout.name == "377160" and fallout["provider"] == "Bethesda Game Studios"
    assert fallout["category"] == "RPG" and "Open World" in fallout["badges"]
    assert set(fallout["attrs"]) == {"publisher", "developer", "genres", "price", "release_date"}
    skyrim = items.loc["title:The Elder Scrolls V Skyrim"]
    assert skyrim["title"] == "The Elder Scrolls V Skyrim" and skyrim["badges"] == [] and skyrim["attrs"] == {}


@needs_data
def test_steam_seed_and_full_catalogue(steam: Dataset) -> None:
    other = read_dataset("steam", seed=1, include_unplayed_catalog=True)
    assert not other.events["ts"].equals(steam.events["ts"])
    assert other.events["item_id"].equals(steam.events["item_id"])
    assert len(other.items) > 30_000 and set(steam.items["item_id"]) <= set(other.items["item_id"])
    assert_contract(other)


@needs_data
def test_yoochoose(yoochoose: Dataset) -> None:
    assert_contract(yoochoose)
    assert yoochoose.events["user_id"].isna().all() and yoochoose.users.empty
    assert (yoochoose.events["event_type"] == "click").all()
    assert split_counts(yoochoose, "session_id") == (70_278, 13_568, 17_794, 3_416)
    assert yoochoose.events["item_id"].nunique() == len(yoochoose.items) == 2_933


@needs_data
def test_yoochoose_files_match_the_split(yoochoose: Dataset) -> None:
    folder = DATA_DIR / "yoochoose-100k-sample"
    train = read_clicks(folder / "yoochoose-clicks-100k_train_full.txt")
    test = read_clicks(folder / "yoochoose-clicks-100k_test.txt")
    test_from = pd.Timestamp(yoochoose.preset_split.test_from)
    assert train["ts"].max() < test_from == test["ts"].min()
    assert test_from == pd.Timestamp("2014-04-07T00:49:53.197Z")  # Time 1396831793.197, to the ms


@needs_data
def test_yoochoose_validation_part() -> None:
    dataset = read_dataset("yoochoose", part="validation")
    train, test, train_sessions, test_sessions = split_counts(dataset, "session_id")
    assert train + test == 53_254 + 16_539
    # session-rec splits whole sessions by their last click: one train_tr session (4 clicks) runs past
    # the first train_valid click, so a per-event split moves those 4 clicks to the test side.
    assert (train, test) == (53_254 - 4, 16_539 + 4)
    assert dataset.events["session_id"].nunique() == 13_629 + 4_084
    with pytest.raises(ValueError, match="part"):
        read_dataset("yoochoose", part="test")


# --------------------------------------------------------------------------------------------
# The generic format


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_generic_csv(tmp_path: Path) -> None:
    write(
        tmp_path / "events.csv",
        "user_id,item_id,event_type,ts,session_id,value,device\n"
        "alice,g1,impression,2024-05-01T12:00:00Z,s1,,ios\n"
        "alice,g1,play,2024-05-01T12:00:30Z,s1,1800,ios\n"
        ",g2,click,1714566600,s2,,web\n"
        "bob,g2,rating,2024-05-02T08:00:00+02:00,,4,\n",
    )
    write(
        tmp_path / "items.csv",
        'item_id,title,badges,attrs\ng1,"Star, Legion",co-op|space,"{""price"": 9.99}"\ng9,Unplayed,,\n',
    )
    write(tmp_path / "users.csv", 'user_id,device,attrs,created_at\nalice,ios,"{""age"": 30}",2023-01-01\n')
    dataset = read_dataset("generic", path=tmp_path, name="shop")
    assert_contract(dataset)
    assert dataset.name == "shop"
    events = dataset.events
    assert events["user_id"].tolist() == ["alice", "alice", None, "bob"]
    assert events["ts"].tolist()[2:] == [
        pd.Timestamp("2024-05-01T12:30:00Z"),
        pd.Timestamp("2024-05-02T06:00:00Z"),
    ]
    assert events["value"].tolist()[1] == 1800.0 and np.isnan(events["value"].iat[0])
    items = dataset.items.set_index("item_id")
    assert items.loc["g1", "badges"] == ["co-op", "space"] and items.loc["g1", "attrs"] == {"price": 9.99}
    assert items.loc["g1", "title"] == "Star, Legion"
    assert items.loc["g2", "title"] == "g2"  # bare item for an event item missing from the catalogue
    assert items.loc["g1", "created_at"] == pd.Timestamp("2024-05-01T12:00:00Z")  # its first event
    assert items.loc["g9", "created_at"] == events["ts"].min()  # never seen: the log's start
    assert dataset.users["created_at"].tolist() == [pd.Timestamp("2023-01-01", tz="UTC")]


def test_generic_parquet(tmp_path: Path) -> None:
    pd.DataFrame(
        {
            "user_id": [196, 197],
            "item_id": [242, 302],
            "event_type": ["rating", "play"],
            "ts": pd.to_datetime(["2024-01-01 10:00", "2024-01-02 10:00"]),
            "value": [3, 60],
        }
    ).to_parquet(tmp_path / "events.parquet")
    pd.DataFrame(
        {"item_id": ["242"], "badges": [["a", "b"]], "attrs": [json.dumps({"k": 1})]}
    ).to_parquet(tmp_path / "items.parquet")
    dataset = read_dataset("generic", path=tmp_path)
    assert_contract(dataset)
    assert dataset.events["user_id"].tolist() == ["196", "197"]
    assert dataset.events["ts"].iat[0] == pd.Timestamp("2024-01-01 10:00", tz="UTC")
    item = dataset.items.set_index("item_id").loc["242"]
    assert item["badges"] == ["a", "b"] and item["attrs"] == {"k": 1}


# --------------------------------------------------------------------------------------------
# Malformed files name the file and the line of the first bad row


def assert_format_error(excinfo: pytest.ExceptionInfo, path: Path, line: int | None, *words: str) -> None:
    error = excinfo.value
    message = str(error)
    assert str(path) in message, message
    assert error.line == line, message
    if line is not None:
        assert f"{path}:{line}:" in message
    for word in words:
        assert word in message, message


def test_bad_event_type_reports_the_physical_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        "user_id,item_id,event_type,ts\n"
        "alice,g1,click,2024-01-01\n"
        "\n"  # blank lines are skipped by the parser but still count as lines
        "bob,g2,click,1714566600\n"
        "bob,g3,clik,2024-01-02\n"  # line 5
        "bob,g3,click,garbage\n",  # line 6: a later problem is not the one reported
    )
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("generic", path=tmp_path)
    assert_format_error(excinfo, path, 5, "'clik'", "add_to_cart", "impression")


def test_multiline_quoted_field_keeps_line_numbers(tmp_path: Path) -> None:
    write(tmp_path / "events.csv", "user_id,item_id,event_type,ts\na,g1,click,1\n")
    path = write(tmp_path / "items.csv", 'item_id,description,attrs\ng1,"two\nlines",\ng2,,{oops}\n')
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("generic", path=tmp_path)
    assert_format_error(excinfo, path, 4, "attrs", "JSON")


@pytest.mark.parametrize(
    ("rows", "line", "words"),
    [
        ("a,g1,rating,1,3\na,g1,rating,1,7\n", 3, ("rating value 7", "1..5")),
        ("a,g1,play,1,-5\n", 2, ("negative",)),
        ("a,g1,play,1,ten\n", 2, ("'ten'", "not a number")),
        ("a,g1,click,1,\na,g1,click,1714566600000,\n", 3, ("1714566600000", "unix seconds")),
        ("a,g1,click,,\n", 2, ("missing ts",)),
        ("a,,click,1,\n", 2, ("empty item_id",)),
        (",g1,click,1,\n", 2, ("user_id or a session_id",)),
    ],
)
def test_bad_event_values(tmp_path: Path, rows: str, line: int, words: tuple[str, ...]) -> None:
    path = write(tmp_path / "events.csv", "user_id,item_id,event_type,ts,value\n" + rows)
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("generic", path=tmp_path)
    assert_format_error(excinfo, path, line, *words)


def test_unknown_and_missing_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "user_id,item_id,event_type,ts,colour\na,b,click,1,red\n")
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("generic", path=tmp_path)
    assert_format_error(excinfo, path, 1, "unknown column 'colour'")
    path = write(tmp_path / "events.csv", "user_id,item_id,ts\na,b,1\n")
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("generic", path=tmp_path)
    assert_format_error(excinfo, path, 1, "missing required column", "event_type")


def test_generic_catalogue_errors(tmp_path: Path) -> None:
    write(tmp_path / "events.csv", "user_id,item_id,event_type,ts\na,b,click,1\n")
    path = write(tmp_path / "items.csv", "item_id,title\nb,One\nc,Two\nb,Again\n")
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("generic", path=tmp_path)
    assert_format_error(excinfo, path, 4, "duplicate item_id 'b'")
    (tmp_path / "items.csv").unlink()
    path = write(tmp_path / "users.csv", "user_id,age\na,3\n")
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("generic", path=tmp_path)
    assert_format_error(excinfo, path, 1, "unknown column 'age'")


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {"user_id": ["a", "b"], "item_id": ["x", "y"], "event_type": ["click", "nope"], "ts": [1.0, 2.0]}
    ).to_parquet(path)
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("generic", path=tmp_path)
    assert_format_error(excinfo, path, 2, "row 2:", "'nope'")


def test_generic_needs_events(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="no events.csv or events.parquet"):
        read_dataset("generic", path=tmp_path)
    path = write(tmp_path / "events.csv", "user_id,item_id,event_type,ts\n")
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("generic", path=tmp_path)
    assert_format_error(excinfo, path, None, "no events")


def test_gowalla_non_integer_token(tmp_path: Path) -> None:
    path = write(tmp_path / "gowalla" / "train.txt", "0 1 2 3\n1 4 5\n2 6 7x 8\n")
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("gowalla", data_dir=tmp_path)
    assert_format_error(excinfo, path, 3, "'7x'")


@pytest.mark.parametrize(
    ("data", "line", "words"),
    [
        ("1\t2\t3\t881250949\n1\t3\t7\t881250949\n", 2, ("rating value 7",)),
        ("1\t2\t3\t881250949\n1\t3\t4\t881250949\t9\n", 2, ("expected 4 fields, saw 5",)),
        ("1\t2\t3\t881250949\n\n1\t3\n", 3, ("expected 4 non-empty tab-separated fields",)),
        ("1\t2\tthree\t881250949\n", 1, ("'three'", "not a number")),
    ],
)
def test_movielens_bad_lines(tmp_path: Path, data: str, line: int, words: tuple[str, ...]) -> None:
    path = write(tmp_path / "ml-100k" / "u.data", data)
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("ml-100k", data_dir=tmp_path)
    assert_format_error(excinfo, path, line, *words)


def test_yoochoose_bad_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "yoochoose-100k-sample" / "yoochoose-clicks-100k_train_full.txt",
        "SessionId\tItemId\tTime\n1\t2\t1396860669.2\n1\t3\n",
    )
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("yoochoose", data_dir=tmp_path)
    assert_format_error(excinfo, path, 3, "expected 3 non-empty tab-separated fields")


def test_steam_negative_hours(tmp_path: Path) -> None:
    path = write(
        tmp_path / "steam" / "steam-200k_play-only.csv", "user-id,game-title,value,\n1,Portal,2.5,\n2,Portal,-1,\n"
    )
    with pytest.raises(DatasetFormatError) as excinfo:
        read_dataset("steam", data_dir=tmp_path)
    assert_format_error(excinfo, path, 3, "negative")
