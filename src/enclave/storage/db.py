"""Engine, sessions and migrations.

``open_database`` creates the engine for a URL and brings the schema to the
newest Alembic revision, so a fresh ``ENCLAVE_HOME`` and an old one both start
on the current schema. SQLite gets WAL mode and a busy timeout so the server
and the CLI can use the same file at once. It runs on ``pysqlite3`` (a
SQLite build that can load extensions), the library the knowledge store
uses for sqlite-vec on the same file.

Several replicas may start at once on one Postgres database: ``migrate``
takes a Postgres advisory lock (``MIGRATION_LOCK``) for the upgrade, so the
migrations run once and the others wait and find the schema current.
``enclave db migrate`` runs the same function on its own (a Kubernetes Job
before the Deployment rolls).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pysqlite3.dbapi2 as sqlite3
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key held while migrating ("enclave" in ASCII, as a bigint).
MIGRATION_LOCK = 0x656E636C617665


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    # WAL with NORMAL sync cannot corrupt; a power cut may lose the last commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the database behind ``engine`` to the newest revision.

    Returns (revision before, revision after). On Postgres the upgrade holds a
    transaction-level advisory lock, so replicas starting together run each
    migration once; the ones that waited find nothing left to do.
    """
    config = alembic_config()
    head = ScriptDirectory.from_config(config).get_current_head() or ""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        before = MigrationContext.configure(connection).get_current_revision()
        if before != head:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    return before, head


@contextmanager
def startup_lock(engine: Engine) -> Iterator[None]:
    """Hold a Postgres advisory lock (no-op on SQLite) around start-up writes.

    Replicas starting together would otherwise race to create the same admin
    key or workspace and fail on the unique index.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK + 1})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK + 1})
            connection.commit()


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision (None: empty database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def create_database_engine(url: str) -> Engine:
    """The engine for ``url`` (SQLite with WAL and the extension-capable driver), unmigrated."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # The same SQLite library as the knowledge store (which loads sqlite-vec):
        # two SQLite copies on one file in one process can corrupt it.
        options["module"] = sqlite3
    engine = create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def open_database(url: str) -> tuple[Engine, sessionmaker]:
    """Create the engine, migrate it, and return it with a session factory."""
    engine = create_database_engine(url)
    migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
