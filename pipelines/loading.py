"""`recserve load`: read a dataset, COPY it into its namespace in one transaction, print a summary."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pipelines.datasets import read_dataset
from stores.event_store import EventStore
from stores.postgres import Database
from stores.settings import Settings


def load_into_store(dataset: str, settings: Settings, replace: bool = False, **options: Any) -> dict[str, Any]:
    data = read_dataset(dataset, settings.data_dir if dataset != "generic" else None, **options)
    store = EventStore(Database.from_settings(settings))
    summary = store.load_dataset(data, replace=replace)
    return {**asdict(summary), "events_per_second": round(summary.events_per_second)}
