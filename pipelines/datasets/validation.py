"""Checks and normalisation shared by every reader: raw columns in, contract frames out.

Readers parse a file into columns, turn them into `stores.frames` frames with the helpers here and
run `check_events` (plus their own `Check`s) before returning. Every check is a vectorised boolean
mask over the rows; only when one is set does `raise_first` map the first bad row back to its
physical line in the file and raise `DatasetFormatError(path, line, reason)`. The happy path
therefore never loops in Python over the rows.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stores.frames import EVENT_COLUMNS, EVENT_TYPES, ITEM_COLUMNS, USER_COLUMNS, DatasetFormatError

ALLOWED_EVENT_TYPES = ", ".join(sorted(EVENT_TYPES))
# Anything outside this range is almost always milliseconds or microseconds given as seconds.
TS_MIN = pd.Timestamp("1970-01-01", tz="UTC")
TS_MAX = pd.Timestamp("2100-01-01", tz="UTC")
_TS_DTYPE = "datetime64[ns, UTC]"
_TIME_COLUMNS = {"ts", "created_at"}


@dataclass(frozen=True)
class Check:
    """One validation rule: `bad` marks the rows that break it, `reason(row)` explains one of them."""

    bad: np.ndarray
    reason: Callable[[int], str]


# --------------------------------------------------------------------------------------------
# Where a row came from


class Source:
    """Maps a row position of a parsed frame back to a place in its file."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def error(self, row: int, reason: str) -> DatasetFormatError:
        raise NotImplementedError


class LineSource(Source):
    """Rows whose physical line numbers are known up front (line-oriented formats)."""

    def __init__(self, path: Path | str, lines: np.ndarray):
        super().__init__(path)
        self.lines = lines

    def error(self, row: int, reason: str) -> DatasetFormatError:
        return DatasetFormatError(self.path, int(self.lines[row]), reason)


class CsvSource(Source):
    """A delimited text file read by pandas (which skips blank lines).

    The physical line is found only on the error path, by re-reading the file with the csv module,
    so quoted fields spanning lines and blank lines are counted exactly.
    """

    def __init__(self, path: Path | str, *, sep: str, header: bool, encoding: str, quoting: int):
        super().__init__(path)
        self.sep, self.header, self.encoding, self.quoting = sep, header, encoding, quoting

    def error(self, row: int, reason: str) -> DatasetFormatError:
        return DatasetFormatError(self.path, self.physical_line(row), reason)

    def physical_line(self, row: int) -> int:
        target = row + int(self.header)
        with open(self.path, newline="", encoding=self.encoding) as handle:
            reader = csv.reader(handle, delimiter=self.sep, quoting=self.quoting)
            end = 0  # line on which the previous record ended
            for record in reader:
                start, end = end + 1, reader.line_num
                if not record:
                    continue
                if target == 0:
                    return start
                target -= 1
        raise ValueError(f"{self.path} has no data row {row}")


class ParquetSource(Source):
    """Parquet has no lines: report the 1-based row number, and say so in the reason."""

    def error(self, row: int, reason: str) -> DatasetFormatError:
        return DatasetFormatError(self.path, row + 1, f"row {row + 1}: {reason}")


def raise_first(source: Source, checks: Iterable[Check]) -> None:
    """Raise for the earliest row any check marks bad; on a tie the earlier check explains it."""
    first: tuple[int, Check] | None = None
    for check in checks:
        bad = np.asarray(check.bad, dtype=bool)
        if bad.any():
            row = int(bad.argmax())
            if first is None or row < first[0]:
                first = (row, check)
    if first is not None:
        row, check = first
        raise source.error(row, check.reason(row))


# --------------------------------------------------------------------------------------------
# Reading files


def read_delimited(
    path: Path,
    *,
    sep: str,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
) -> tuple[pd.DataFrame, CsvSource]:
    """Read a delimited file as text columns ("" where empty). Header from the file unless `names`."""
    source = CsvSource(path, sep=sep, header=names is None, encoding=encoding, quoting=quoting)
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            header=None if names else 0,
            names=names,
            dtype=str,
            keep_default_na=False,  # "NA" or "None" may be a real title or id
            encoding=encoding,
            quoting=quoting,
        )
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match is None:
            raise DatasetFormatError(path, None, f"unparsable file: {exc}") from exc
        expected, line, saw = match.groups()
        raise DatasetFormatError(path, int(line), f"expected {expected} fields, saw {saw}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(path, None, f"not {encoding} text: {exc}") from exc
    return frame, source


def require_columns(
    path: Path, columns: Iterable[str], required: Iterable[str], optional: Iterable[str], line: int | None
) -> None:
    """Every required column is present and nothing outside required + optional is."""
    present, allowed = list(columns), [*required, *optional]
    missing = [c for c in required if c not in present]
    if missing:
        raise DatasetFormatError(path, line, f"missing required column(s) {missing}; found {present}")
    unknown = [c for c in present if c not in allowed]
    if unknown:
        raise DatasetFormatError(path, line, f"unknown column {unknown[0]!r}; allowed columns: {allowed}")


def empty_fields(frame: pd.DataFrame, sep_name: str) -> Check:
    """In a fixed-format file every field is filled: an empty one means a short or broken line."""
    bad = np.zeros(len(frame), dtype=bool)
    for column in frame.columns:
        bad |= (frame[column] == "").to_numpy()
    return Check(bad, lambda _: f"expected {frame.shape[1]} non-empty {sep_name}-separated fields")


# --------------------------------------------------------------------------------------------
# Parsing columns


def as_text(values: Any) -> np.ndarray:
    """An object array of Python str, None where missing or empty. Numbers become their digits."""
    series = pd.Series(values, copy=False)
    if pd.api.types.is_float_dtype(series.dtype):
        # Parquet stores an integer id column with gaps as float: 196.0 must read "196".
        whole = series.dropna()
        if (whole == np.floor(whole)).all():
            series = series.astype("Int64")
    missing = series.isna().to_numpy()
    if not (pd.api.types.is_string_dtype(series.dtype) or series.dtype == object):
        series = series.astype(str)
    out = series.astype(object).to_numpy(dtype=object, copy=True)
    out[missing | (out == "")] = None
    return out


def parse_float(values: Any, column: str) -> tuple[np.ndarray, Check]:
    """float64 with NaN where missing; the Check marks non-empty values that are not finite numbers."""
    series = pd.Series(values, copy=False)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        number = series.to_numpy(dtype=np.float64, na_value=np.nan)
        given = ~np.isnan(number)
    else:
        text = as_text(series)
        given = pd.notna(text)
        number = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    bad = given & ~np.isfinite(number)
    return number, Check(bad, lambda row: f"{column} {series.iat[row]!r} is not a number")


def unix_seconds(seconds: np.ndarray) -> pd.Series:
    """Unix seconds (int or float) to datetime64[ns, UTC], exact to the microsecond.

    NaN, and magnitudes that would overflow nanoseconds (milliseconds given as seconds), become NaT.
    """
    seconds = np.asarray(seconds, dtype=np.float64)
    known = np.abs(seconds) < 1e11  # False for NaN too
    micros = np.zeros(len(seconds), dtype=np.int64)
    micros[known] = np.round(seconds[known] * 1e6)
    ts = micros.astype("datetime64[us]").astype("datetime64[ns]")
    ts[~known] = np.datetime64("NaT")
    return pd.Series(ts).dt.tz_localize("UTC")


def parse_ts(values: Any, column: str) -> tuple[pd.Series, Check]:
    """ISO 8601 text (naive means UTC) or unix seconds, or a datetime column, to datetime64[ns, UTC].

    The Check marks values that are unparsable or outside 1970..2100; missing values are NaT and are
    left to `check_events`, which reports them as missing rather than malformed.
    """
    series = pd.Series(values, copy=False).reset_index(drop=True)
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        ts = series.dt.tz_convert("UTC")
        given = series.notna().to_numpy()
    elif pd.api.types.is_datetime64_dtype(series.dtype):
        ts = series.dt.tz_localize("UTC")
        given = series.notna().to_numpy()
    else:
        ts, given = _parse_ts_values(series)
    in_range = ((ts >= TS_MIN) & (ts < TS_MAX)).to_numpy()
    bad = given & ~in_range
    ts = ts.where(in_range).astype(_TS_DTYPE)

    def reason(row: int) -> str:
        return f"{column} {series.iat[row]!r} is not an ISO 8601 time or unix seconds between 1970 and 2100"

    return ts, Check(bad, reason)


def _parse_ts_values(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Numbers are unix seconds, other text ISO 8601; also returns which values were given."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        number = series.to_numpy(dtype=np.float64, na_value=np.nan)
        text = np.full(len(series), None, dtype=object)
    else:
        text = as_text(series)
        number = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    given = ~np.isnan(number) | pd.notna(text)
    ts = unix_seconds(number)
    iso = np.isnan(number) & pd.notna(text)
    if iso.any():
        parsed = pd.to_datetime(pd.Series(text[iso], dtype=object), utc=True, format="ISO8601", errors="coerce")
        ts[iso] = parsed.where(parsed.between(TS_MIN, TS_MAX)).astype(_TS_DTYPE).to_numpy()
    return ts, given


# --------------------------------------------------------------------------------------------
# Building contract frames


def _column(name: str, value: Any, n: int) -> pd.Series:
    if name == "value":
        return pd.Series(np.full(n, np.nan) if value is None else np.asarray(value, dtype=np.float64))
    if name in _TIME_COLUMNS:
        if value is None or isinstance(value, pd.Timestamp):
            return pd.Series(pd.NaT if value is None else value, index=range(n), dtype=_TS_DTYPE)
        ts = pd.Series(value).reset_index(drop=True)
        if not isinstance(ts.dtype, pd.DatetimeTZDtype):
            ts = ts.dt.tz_localize("UTC")
        return ts.astype(_TS_DTYPE)
    if name == "badges":
        rows = [[] for _ in range(n)] if value is None else list(value)
        return pd.Series(rows, dtype=object)
    if name == "attrs":
        rows = [{} for _ in range(n)] if value is None else list(value)
        return pd.Series(rows, dtype=object)
    if value is None or isinstance(value, str):
        return pd.Series(np.full(n, value, dtype=object), dtype=object)
    # pandas 3 infers its own string dtype from str arrays: the contract wants plain objects.
    return pd.Series(np.asarray(value, dtype=object), dtype=object)


def _frame(columns: list[str], data: Mapping[str, Any]) -> pd.DataFrame:
    unknown = set(data) - set(columns)
    if unknown:
        raise TypeError(f"not contract columns: {sorted(unknown)}")
    lengths = {len(v) for v in data.values() if v is not None and not isinstance(v, (str, pd.Timestamp))}
    if len(lengths) != 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    n = lengths.pop()
    return pd.DataFrame({name: _column(name, data.get(name), n) for name in columns})


def events_frame(**columns: Any) -> pd.DataFrame:
    """EVENT_COLUMNS in order with contract dtypes.

    A str or Timestamp broadcasts to every row; an absent column is missing (None, NaN, NaT, [] or {}).
    """
    return _frame(EVENT_COLUMNS, columns)


def items_frame(**columns: Any) -> pd.DataFrame:
    return _frame(ITEM_COLUMNS, columns)


def users_frame(**columns: Any) -> pd.DataFrame:
    return _frame(USER_COLUMNS, columns)


def empty_users() -> pd.DataFrame:
    return users_frame(user_id=np.array([], dtype=object))


def check_events(source: Source, events: pd.DataFrame, checks: Iterable[Check] = ()) -> None:
    """The contract rules every event obeys (the same ones the database enforces), plus `checks`.

    Reader-specific checks come first so that, on a row with several problems, the more precise
    parse error (which quotes the raw value) is the one reported.
    """
    kind, value = events["event_type"], events["value"]
    rating, play = (kind == "rating").to_numpy(), (kind == "play").to_numpy()
    value_np = value.to_numpy()
    keys = events["idempotency_key"]
    rules = [
        *checks,
        Check(events["item_id"].isna().to_numpy(), lambda _: "empty item_id"),
        Check(
            (events["user_id"].isna() & events["session_id"].isna()).to_numpy(),
            lambda _: "an event needs a user_id or a session_id",
        ),
        Check(
            ~kind.isin(EVENT_TYPES).to_numpy(),
            lambda row: f"event_type {kind.iat[row]!r} is not one of: {ALLOWED_EVENT_TYPES}",
        ),
        Check(events["ts"].isna().to_numpy(), lambda _: "missing ts"),
        Check(
            rating & ~((value_np >= 1) & (value_np <= 5)),
            lambda row: f"rating value {value.iat[row]} is outside 1..5",
        ),
        Check(play & (value_np < 0), lambda row: f"play value {value.iat[row]} is negative (seconds played)"),
        Check(
            (keys.notna() & keys.duplicated()).to_numpy(),
            lambda row: f"duplicate idempotency_key {keys.iat[row]!r}",
        ),
    ]
    raise_first(source, rules)


# --------------------------------------------------------------------------------------------
# Defaults derived from the events


def first_seen(events: pd.DataFrame, key: str) -> pd.Series:
    """The first event time of each id in column `key` (index: the id)."""
    return events.groupby(key, sort=False)["ts"].min()


def fill_created_at(frame: pd.DataFrame, key: str, events: pd.DataFrame) -> pd.DataFrame:
    """Where created_at is missing: the id's first event, else the log's first event.

    Sources without creation times still need one (the column is NOT NULL in the store), and this
    choice never dates an item or user after its own first event.
    """
    missing = frame["created_at"].isna()
    if not missing.any():
        return frame
    seen = first_seen(events, key)
    fallback = pd.Series(frame.loc[missing, key].map(seen).to_numpy(), dtype=_TS_DTYPE)
    fallback = fallback.fillna(events["ts"].min())
    frame = frame.copy()
    frame.loc[missing, "created_at"] = fallback.to_numpy()
    return frame


def complete_items(items: pd.DataFrame | None, events: pd.DataFrame) -> pd.DataFrame:
    """Add a bare row (title = item_id) for each event item missing from the catalogue (or all, if none)."""
    seen = first_seen(events, "item_id")
    known = items["item_id"] if items is not None else []
    missing = ~seen.index.isin(known)
    extra = np.asarray(seen.index[missing], dtype=object)
    bare = items_frame(item_id=extra, title=extra, created_at=seen[missing])
    items = bare if items is None else pd.concat([items, bare], ignore_index=True) if len(extra) else items
    return fill_created_at(items, "item_id", events)
