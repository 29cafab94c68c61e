"""Numbered SQL migrations, applied in order inside the namespace's schema and recorded there.

Files are `stores/migrations/NNNN_name.sql`. Each runs in the same transaction as its record in
`schema_migrations`, under an advisory lock, so concurrent starters apply it once. A file that
changed after it was applied is an error, not a silent re-run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from psycopg2 import sql

from stores.postgres import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        migrations.append(Migration(int(number), name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {directory}")
    return migrations


def migrate(db: Database, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply pending migrations to `db.namespace`; returns the ones applied now."""
    schema = sql.Identifier(db.namespace)
    applied_now = []
    with db.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recserve-migrate:{db.namespace}",))
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(schema)
        )
        cur.execute(sql.SQL("SELECT version, checksum FROM {}.schema_migrations").format(schema))
        done = dict(cur.fetchall())
        for migration in discover(directory):
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.version:04d}_{migration.name} changed after it was applied"
                    )
                continue
            cur.execute(migration.sql)
            cur.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)").format(
                    schema
                ),
                (migration.version, migration.name, migration.checksum),
            )
            applied_now.append(migration)
    return applied_now


def drop_namespace(db: Database) -> None:
    with db.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(db.namespace)))
