"""Dataset readers: each turns one public dataset (or the demo generator) into a `stores.frames.Dataset`.

    from pipelines.datasets import read_dataset
    dataset = read_dataset("ml-100k")                      # from the shared data folder
    dataset = read_dataset("generic", path="my_export/")   # your own data, see README.md here

Every reader is `read_<name>(data_dir: Path, **options) -> Dataset` and raises
`stores.frames.DatasetFormatError` naming the file and line of the first malformed row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from stores.frames import Dataset
from stores.settings import get_settings

from .demo import read_demo
from .generic import read_generic
from .gowalla import read_gowalla
from .movielens import read_movielens
from .steam import read_steam
from .yoochoose import read_yoochoose

READERS: dict[str, Callable[..., Dataset]] = {
    "demo": read_demo,
    "ml-100k": read_movielens,
    "steam": read_steam,
    "gowalla": read_gowalla,
    "yoochoose": read_yoochoose,
    "generic": read_generic,
}


def default_data_dir() -> Path:
    """RECSERVE_DATA_DIR if set, else `<repo root>/../shared/data` (see stores.settings)."""
    return get_settings().data_dir


def read_dataset(name: str, /, data_dir: Path | None = None, **options: Any) -> Dataset:
    """Read dataset `name` (a READERS key) from `data_dir`, passing `options` to its reader.

    `name` is positional-only so that a reader option may itself be called `name` (generic).
    """
    try:
        reader = READERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(READERS)}") from None
    return reader(Path(data_dir) if data_dir is not None else default_data_dir(), **options)


__all__ = [
    "READERS",
    "default_data_dir",
    "read_dataset",
    "read_demo",
    "read_generic",
    "read_gowalla",
    "read_movielens",
    "read_steam",
    "read_yoochoose",
]
