"""Tells a follower of the event log when the log has grown, from PostgreSQL's LISTEN/NOTIFY.

Migration 0003 makes every statement that adds events or session ends notify the channel `recserve_log`
at commit, with the namespace as payload. A `LogWatch` listens on its own connection, and the event loop
drains the notifications as they arrive (`add_reader`), so the server's notification queue never backs
up behind an idle replica. `generation` counts them: a follower that saw the same generation at its last
read has nothing new to read. A notification is sent after its rows are committed, so any row the last
read missed is announced after that read began.

While not listening (PostgreSQL down, the connection lost, or the namespace not yet migrated to 0003)
`listening` is False and the follower must read every time; listening again bumps the generation, since
notifications may have been missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import psycopg2
import psycopg2.extensions

log = logging.getLogger(__name__)

CHANNEL = "recserve_log"
TRIGGER_INSTALLED = """
    SELECT EXISTS (SELECT 1 FROM pg_trigger t
                   JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = %s AND c.relname = 'events' AND t.tgname = 'events_notify_log')
"""


class NotMigrated(Exception):
    """The namespace has no notify trigger yet (`recserve migrate` adds it)."""


class LogWatch:
    """One namespace's notifications, counted in `generation`, on a listening connection of its own."""

    def __init__(self, dsn: str, namespace: str, retry_s: float = 5.0, timer: Callable[[], float] = time.monotonic):
        self.dsn, self.namespace = dsn, namespace
        self.retry_s = retry_s  # how long after a failed connection to try again
        self.generation = 0
        self._timer = timer
        self._conn: psycopg2.extensions.connection | None = None
        self._fd = -1  # the connection's socket, kept: a broken connection may no longer tell it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry_at = 0.0
        self._failing = False  # warned of the current outage already: one warning per outage
        self._trying: asyncio.Task | None = None  # listen_soon's attempt; held, as tasks are weakly referenced

    @property
    def listening(self) -> bool:
        return self._conn is not None

    def listen_soon(self) -> None:
        """`listen` in a task of its own, so that no request waits for a connection (or its timeout)."""
        if self._conn is None and (self._trying is None or self._trying.done()) and self._timer() >= self._retry_at:
            self._trying = asyncio.get_running_loop().create_task(self.listen())

    async def listen(self) -> None:
        """Start listening, unless already listening or a connection failed under `retry_s` ago.
        Call it on the event loop whose requests read the log."""
        if self._conn is not None or self._timer() < self._retry_at:
            return
        try:
            conn = await asyncio.to_thread(self._connect)
        except (psycopg2.Error, NotMigrated) as error:
            self._retry_at = self._timer() + self.retry_s
            if not self._failing:
                log.warning("log watch: cannot listen (the log is read before every answer meanwhile): %s", error)
            self._failing = True
            return
        self._failing = False
        self._conn, self._fd, self._loop = conn, conn.fileno(), asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._drain)
        self.generation += 1  # what was added before LISTEN took effect was announced to no one

    def _connect(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(self.dsn, connect_timeout=5, application_name="recserve-log-watch")
        try:
            conn.autocommit = True  # LISTEN takes effect at once, not at a commit
            with conn.cursor() as cur:
                cur.execute(TRIGGER_INSTALLED, (self.namespace,))
                if not cur.fetchone()[0]:
                    raise NotMigrated(f"namespace {self.namespace!r} has no notify trigger: run `recserve migrate`")
                cur.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _drain(self) -> None:
        assert self._conn is not None
        try:
            self._conn.poll()
        except psycopg2.Error as error:
            log.warning("log watch: connection lost: %s", error)
            self.close()
            return
        if any(n.payload == self.namespace for n in self._conn.notifies):
            self.generation += 1
        self._conn.notifies.clear()

    def close(self) -> None:
        if self._conn is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._conn.close()
        self._conn = self._loop = None
