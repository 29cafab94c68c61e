"""Shared fixtures. Database tests use DATABASE_URL (CI: the machine's PostgreSQL) or the embedded
server, each test module in a namespace (schema) of its own that is dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from stores.postgres import Database, start_embedded, stop_embedded
from stores.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("RECSERVE_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.exists():
        pytest.fail(f"the shared datasets are missing at {DATA_DIR} (set RECSERVE_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def dsn(tmp_path_factory):
    settings = Settings()
    if settings.database_url is not None:
        yield settings.database_url
        return
    state_dir = tmp_path_factory.mktemp("state")
    yield start_embedded(state_dir)
    stop_embedded(state_dir)


@contextmanager
def migrated_namespace(dsn: str) -> Iterator[Database]:
    """A fresh, migrated namespace, dropped afterwards."""
    from stores.migrations import drop_namespace, migrate

    database = Database(dsn, f"t_{uuid.uuid4().hex[:12]}", max_connections=4)
    migrate(database)
    yield database
    drop_namespace(database)
    database.close()


@pytest.fixture
def db(dsn):
    """A fresh, migrated namespace for one test."""
    with migrated_namespace(dsn) as database:
        yield database


@pytest.fixture
def other_db(dsn):
    """A second namespace beside `db`, for what must not cross between namespaces."""
    with migrated_namespace(dsn) as database:
        yield database
