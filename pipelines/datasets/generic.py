"""Your own data in a documented format (see README.md next to this file).

Source: a directory holding events.csv or events.parquet (required) and, optionally, items and
users in the same two formats. Values are taken verbatim (no trimming); an empty CSV cell is
missing. Columns outside the documented ones are an error, so a typo never silently drops data.

Synthesised only where the data leaves a gap: bare items (title = item_id) for event items missing
from the catalogue, and created_at = an item's or user's first event when not given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stores.frames import Dataset, DatasetFormatError

from .validation import (
    Check,
    ParquetSource,
    Source,
    as_text,
    check_events,
    complete_items,
    empty_users,
    events_frame,
    fill_created_at,
    items_frame,
    parse_float,
    parse_ts,
    raise_first,
    read_delimited,
    require_columns,
    users_frame,
)

EVENT_REQUIRED = ["user_id", "item_id", "event_type", "ts"]
EVENT_OPTIONAL = ["session_id", "value", "device", "idempotency_key"]
ITEM_REQUIRED = ["item_id"]
ITEM_OPTIONAL = ["title", "description", "provider", "category", "badges", "attrs", "created_at"]
USER_REQUIRED = ["user_id"]
USER_OPTIONAL = ["device", "attrs", "created_at"]
BADGE_SEPARATOR = "|"


def read_generic(data_dir: Path | None = None, *, path: Path | str, name: str = "generic") -> Dataset:
    """Read the directory `path`. `data_dir` is unused: it keeps the common reader signature."""
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetFormatError(folder, None, "not a directory holding events.csv or events.parquet")
    events = _read_events(_find(folder, "events", required=True))
    items_path, users_path = _find(folder, "items"), _find(folder, "users")
    items = _read_items(items_path) if items_path else None
    users = fill_created_at(_read_users(users_path), "user_id", events) if users_path else empty_users()
    return Dataset(
        name=name,
        events=events,
        items=complete_items(items, events),
        users=users,
        source=str(folder),
    )


def _find(folder: Path, stem: str, required: bool = False) -> Path | None:
    found = [p for p in (folder / f"{stem}.csv", folder / f"{stem}.parquet") if p.exists()]
    if len(found) > 1:
        raise DatasetFormatError(folder, None, f"both {stem}.csv and {stem}.parquet exist: keep one")
    if not found and required:
        raise DatasetFormatError(folder, None, f"no {stem}.csv or {stem}.parquet")
    return found[0] if found else None


def _read_table(path: Path, required: list[str], optional: list[str]) -> tuple[pd.DataFrame, Source]:
    if path.suffix == ".csv":
        frame, source = read_delimited(path, sep=",")
        header_line: int | None = 1
    else:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise DatasetFormatError(path, None, f"unreadable parquet file: {exc}") from exc
        source, header_line = ParquetSource(path), None
    require_columns(path, frame.columns, required, optional, line=header_line)
    return frame.reset_index(drop=True), source


def _text(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    return as_text(frame[column]) if column in frame.columns else None


def _read_events(path: Path) -> pd.DataFrame:
    raw, source = _read_table(path, EVENT_REQUIRED, EVENT_OPTIONAL)
    if raw.empty:
        raise DatasetFormatError(path, None, "no events")
    ts, bad_ts = parse_ts(raw["ts"], "ts")
    checks = [bad_ts]
    value = None
    if "value" in raw.columns:
        value, bad_value = parse_float(raw["value"], "value")
        checks.append(bad_value)
    events = events_frame(
        user_id=_text(raw, "user_id"),
        item_id=_text(raw, "item_id"),
        session_id=_text(raw, "session_id"),
        event_type=_text(raw, "event_type"),
        value=value,
        device=_text(raw, "device"),
        ts=ts,
        idempotency_key=_text(raw, "idempotency_key"),
    )
    check_events(source, events, checks)
    return events


def _read_items(path: Path) -> pd.DataFrame:
    raw, source = _read_table(path, ITEM_REQUIRED, ITEM_OPTIONAL)
    item_id = pd.Series(as_text(raw["item_id"]), dtype=object)
    checks = _key_checks(item_id, "item_id")
    badges = _per_row(raw, "badges", _badges, checks)
    attrs = _per_row(raw, "attrs", _attrs, checks)
    created_at = _created_at(raw, checks)
    raise_first(source, checks)
    return items_frame(
        item_id=item_id,
        title=_text(raw, "title"),
        description=_text(raw, "description"),
        provider=_text(raw, "provider"),
        category=_text(raw, "category"),
        badges=badges,
        attrs=attrs,
        created_at=created_at,
    )


def _read_users(path: Path) -> pd.DataFrame:
    raw, source = _read_table(path, USER_REQUIRED, USER_OPTIONAL)
    user_id = pd.Series(as_text(raw["user_id"]), dtype=object)
    checks = _key_checks(user_id, "user_id")
    attrs = _per_row(raw, "attrs", _attrs, checks)
    created_at = _created_at(raw, checks)
    raise_first(source, checks)
    return users_frame(user_id=user_id, device=_text(raw, "device"), attrs=attrs, created_at=created_at)


def _key_checks(ids: pd.Series, column: str) -> list[Check]:
    """A catalogue key is present and unique."""
    given = ids.notna().to_numpy()
    return [
        Check(~given, lambda _: f"empty {column}"),
        Check(ids.duplicated().to_numpy() & given, lambda row: f"duplicate {column} {ids[row]!r}"),
    ]


def _created_at(raw: pd.DataFrame, checks: list[Check]) -> pd.Series | None:
    if "created_at" not in raw.columns:
        return None
    created_at, bad = parse_ts(raw["created_at"], "created_at")
    checks.append(bad)
    return created_at


def _per_row(
    raw: pd.DataFrame, column: str, convert: Callable[[Any], Any], checks: list[Check]
) -> list[Any] | None:
    """Convert a badges/attrs column cell by cell (JSON and lists are per cell anyway); a failure
    becomes a Check."""
    if column not in raw.columns:
        return None
    values, bad, errors = [], np.zeros(len(raw), dtype=bool), {}
    for row, cell in enumerate(raw[column]):
        try:
            values.append(convert(cell))
        except ValueError as exc:
            values.append(None)
            bad[row], errors[row] = True, str(exc)
    checks.append(Check(bad, lambda r: f"{column}: {errors[r]}"))
    return values


def _is_missing(cell: Any) -> bool:
    return cell is None or (isinstance(cell, float) and np.isnan(cell)) or (isinstance(cell, str) and cell == "")


def _badges(cell: Any) -> list[str]:
    """CSV: "a|b|c"; parquet: a list of strings."""
    if _is_missing(cell):
        return []
    if isinstance(cell, str):
        return [badge for badge in cell.split(BADGE_SEPARATOR) if badge]
    if isinstance(cell, (list, tuple, np.ndarray)) and all(isinstance(b, str) for b in cell):
        return list(cell)
    raise ValueError(f"expected {BADGE_SEPARATOR!r}-separated text or a list of strings, got {cell!r}")


def _attrs(cell: Any) -> dict[str, Any]:
    """CSV: a JSON object; parquet: a JSON object string or a map/struct value."""
    if _is_missing(cell):
        return {}
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg}): {cell!r}") from None
    elif isinstance(cell, list):  # pyarrow returns a map column as [(key, value), ...]
        cell = dict(cell)
    if not isinstance(cell, dict):
        raise ValueError(f"expected a JSON object, got {cell!r}")
    return cell
